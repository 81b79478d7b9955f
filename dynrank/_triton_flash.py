"""The GPU kernels of ``tiled_attention.flash``: attention of sequences of any length in tiles (FlashAttention-2's
loop over key blocks with a running softmax, Dao 2023), the attention-probability dropout of each sequence's run
computed in the kernel from its keys (``dropout.DropoutStream.attention``'s masks, bit for bit), so no L x L
tensor is stored: SQuAD's 384-token windows and BART's 768-token sources. Three kernels: the forward (saves each
row's max and log-sum of the softmax), the query gradient (which also writes each row's delta = rowsum(dO * O))
and the key and value gradients. Row i of sequence n, head h of a tensor sits at ``start[n] * s_r + n * s_n +
h * s_h + i * s_r`` (a padded (N, heads, L, dh) view: start 0; the packed (T, heads * dh) rows: s_n 0), the head's
dh values contiguous; keys and values start at ``kstart[n]`` (packed cross-attention: the encoder's rows). A
block of rows past its sequence's length (the grid spans the longest) loops over nothing. Imported only where
Triton is installed; checked against ``tiled_attention.reference`` in tests/test_gpu.py and, with
TRITON_INTERPRET=1, on a CPU (tests/test_packing.py)."""
import triton
import triton.language as tl

from ._triton_dropout import mix, stream_key


@triton.jit
def _keep(seeds_ptr, step_ptr, n, per_run, site_key, h, heads, offs_m, offs_n, P, threshold):
    """The keep mask (BLOCK_M, BLOCK_N) of rows ``offs_m`` and columns ``offs_n`` of sequence n's head h: row key
    ((n's index in its run's batch) * heads + h) * P + i, counter row key * P + j."""
    k = stream_key(tl.load(seeds_ptr + n // per_run), step_ptr, site_key)
    row = (((n % per_run) * heads + h) * P + offs_m).to(tl.uint32)  # modulo 2^32, as every value of the hash
    counter = row[:, None] * P + offs_n.to(tl.uint32)[None, :]
    return mix(counter ^ k) >= (threshold.to(tl.uint32) << 8)  # (u >> 8) >= threshold: the top 24 bits


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """tl.dot, in full fp32 (no TF32) for fp32 inputs: the fp32 path checks against the reference to rounding."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _scores(q, k, n, h, offs_m, offs_n, Lq, Lk, mask_ptr, sm_n, sm_h, sm_i, sm_j, scale, HAS_MASK: tl.constexpr,
            CAUSAL: tl.constexpr, IEEE: tl.constexpr):
    """q k^T * scale of one tile; a masked-out pair -1e30 (the reference's masked_fill with the dtype's minimum: a
    row masked everywhere attends uniformly), a key past the sequence -inf (not a key at all)."""
    s = _dot(q, tl.trans(k), IEEE) * scale
    ok = offs_n[None, :] < Lk
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= offs_m[:, None])
    if HAS_MASK:
        inside = (offs_m[:, None] < Lq) & (offs_n[None, :] < Lk)
        m = tl.load(mask_ptr + n.to(tl.int64) * sm_n + h * sm_h + offs_m[:, None] * sm_i + offs_n[None, :] * sm_j,
                    mask=inside, other=1)
        ok = ok & (m != 0)
    s = tl.where(ok, s, -1e30)
    return tl.where(offs_n[None, :] < Lk, s, float("-inf"))


@triton.jit
def _rows(start_ptr, n, h, s_n, s_r, s_h, offs, L, DH: tl.constexpr):
    """Element offsets of rows ``offs`` of sequence n's head h in a tensor of strides (s_n, s_r, s_h), and which
    of them exist (offs < L)."""
    base = tl.load(start_ptr + n).to(tl.int64) * s_r + n.to(tl.int64) * s_n + h * s_h
    return base + offs[:, None].to(tl.int64) * s_r + tl.arange(0, DH)[None, :], offs[:, None] < L


@triton.jit
def _key_block(q, j, k_ptr, v_ptr, kstart_ptr, n, h, sk_n, sk_r, sk_h, offs_m, Lq, Lk, mask_ptr, sm_n, sm_h, sm_i,
               sm_j, scale, HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr,
               DH: tl.constexpr):
    """The key block from row j of sequence n's head h: its columns, k and v tiles, and the scores of ``q``."""
    offs_n = j + tl.arange(0, BLOCK_N)
    k_rows, k_in = _rows(kstart_ptr, n, h, sk_n, sk_r, sk_h, offs_n, Lk, DH)
    k = tl.load(k_ptr + k_rows, mask=k_in, other=0.0)
    v = tl.load(v_ptr + k_rows, mask=k_in, other=0.0)
    s = _scores(q, k, n, h, offs_m, offs_n, Lq, Lk, mask_ptr, sm_n, sm_h, sm_i, sm_j, scale, HAS_MASK, CAUSAL, IEEE)
    return offs_n, k, v, s


@triton.jit
def _keys_end(Lq, Lk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """Past the last key a block of query rows (program 0's axis) sees: the sequence's end, or its own end if causal;
    0 for a block past the sequence's queries (packed rows: the grid spans the longest sequence), which then loops
    over nothing and stores nothing."""
    end = Lk
    if CAUSAL:
        end = tl.minimum(Lk, (tl.program_id(0) + 1) * BLOCK_M)
    return tl.where(tl.program_id(0) * BLOCK_M < Lq, end, 0)


@triton.jit
def _fwd(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, start_ptr, kstart_ptr, qlen_ptr, klen_ptr, mask_ptr, seeds_ptr, step_ptr,
         sq_n, sq_r, sq_h, sk_n, sk_r, sk_h, sm_n, sm_h, sm_i, sm_j, lse_len, lse_total, per_run, heads, P, scale,
         site_key, threshold, drop_scale, HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
         IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DH: tl.constexpr):
    nh = tl.program_id(1)
    n, h = nh // heads, nh % heads
    Lq, Lk = tl.load(qlen_ptr + n), tl.load(klen_ptr + n)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_rows, q_in = _rows(start_ptr, n, h, sq_n, sq_r, sq_h, offs_m, Lq, DH)
    q = tl.load(q_ptr + q_rows, mask=q_in, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DH], tl.float32)
    for j in range(0, _keys_end(Lq, Lk, CAUSAL, BLOCK_M), BLOCK_N):
        offs_n, k, v, s = _key_block(q, j, k_ptr, v_ptr, kstart_ptr, n, h, sk_n, sk_r, sk_h, offs_m, Lq, Lk, mask_ptr,
                                     sm_n, sm_h, sm_i, sm_j, scale, HAS_MASK, CAUSAL, IEEE, BLOCK_N, DH)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _keep(seeds_ptr, step_ptr, n, per_run, site_key, h, heads, offs_m, offs_n, P, threshold)
            p = tl.where(keep, p * drop_scale, 0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    l_i = tl.where(l_i > 0, l_i, 1.0)  # 0 only in a block past the sequence (nothing stored): no 0 / 0
    row = nh.to(tl.int64) * lse_len + offs_m  # the row's max and log-sum apart: a row masked everywhere has max
    tl.store(lse_ptr + row, m_i, mask=offs_m < Lq)  # -1e30, and -1e30 + log(sum) would round back to -1e30
    tl.store(lse_ptr + lse_total + row, tl.log(l_i), mask=offs_m < Lq)
    tl.store(o_ptr + q_rows, (acc / l_i[:, None]).to(o_ptr.dtype.element_ty), mask=q_in)


@triton.jit
def _bwd_dq(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, dq_ptr, lse_ptr, delta_ptr, start_ptr, kstart_ptr, qlen_ptr,
            klen_ptr, mask_ptr, seeds_ptr, step_ptr, sq_n, sq_r, sq_h, sk_n, sk_r, sk_h, sd_n, sd_r, sd_h, sm_n, sm_h,
            sm_i, sm_j, lse_len, lse_total, per_run, heads, P, scale, site_key, threshold, drop_scale,
            HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DH: tl.constexpr):
    """dQ of one block of query rows; writes their delta_i = sum_d dO_id O_id for ``_bwd_dkdv``."""
    nh = tl.program_id(1)
    n, h = nh // heads, nh % heads
    Lq, Lk = tl.load(qlen_ptr + n), tl.load(klen_ptr + n)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    q_rows, q_in = _rows(start_ptr, n, h, sq_n, sq_r, sq_h, offs_m, Lq, DH)
    do_rows, _ = _rows(start_ptr, n, h, sd_n, sd_r, sd_h, offs_m, Lq, DH)
    q = tl.load(q_ptr + q_rows, mask=q_in, other=0.0)
    do = tl.load(do_ptr + do_rows, mask=q_in, other=0.0)
    o = tl.load(o_ptr + q_rows, mask=q_in, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    row = nh.to(tl.int64) * lse_len + offs_m
    tl.store(delta_ptr + row, delta, mask=offs_m < Lq)
    m = tl.load(lse_ptr + row, mask=offs_m < Lq, other=0.0)
    logl = tl.load(lse_ptr + lse_total + row, mask=offs_m < Lq, other=0.0)
    dq = tl.zeros([BLOCK_M, DH], tl.float32)
    for j in range(0, _keys_end(Lq, Lk, CAUSAL, BLOCK_M), BLOCK_N):
        offs_n, k, v, s = _key_block(q, j, k_ptr, v_ptr, kstart_ptr, n, h, sk_n, sk_r, sk_h, offs_m, Lq, Lk, mask_ptr,
                                     sm_n, sm_h, sm_i, sm_j, scale, HAS_MASK, CAUSAL, IEEE, BLOCK_N, DH)
        p = tl.where(offs_m[:, None] < Lq, tl.exp((s - m[:, None]) - logl[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), IEEE)  # d(dropped p)
        if DROPOUT:
            keep = _keep(seeds_ptr, step_ptr, n, per_run, site_key, h, heads, offs_m, offs_n, P, threshold)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = tl.where(s > -1e29, p * (dp - delta[:, None]), 0.0)  # a masked-out pair passes no gradient to s
        dq += _dot(ds.to(k.dtype), k, IEEE)
    tl.store(dq_ptr + q_rows, (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_in)


@triton.jit
def _bwd_dkdv(q_ptr, k_ptr, v_ptr, do_ptr, dk_ptr, dv_ptr, lse_ptr, delta_ptr, start_ptr, kstart_ptr, qlen_ptr,
              klen_ptr, mask_ptr, seeds_ptr, step_ptr, sq_n, sq_r, sq_h, sk_n, sk_r, sk_h, sd_n, sd_r, sd_h, sm_n,
              sm_h, sm_i, sm_j, lse_len, lse_total, per_run, heads, P, scale, site_key, threshold, drop_scale,
              HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, IEEE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DH: tl.constexpr):
    """dK and dV of one block of keys, over every query row that sees them."""
    nh = tl.program_id(1)
    n, h = nh // heads, nh % heads
    Lq, Lk = tl.load(qlen_ptr + n), tl.load(klen_ptr + n)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_rows, k_in = _rows(kstart_ptr, n, h, sk_n, sk_r, sk_h, offs_n, Lk, DH)
    k = tl.load(k_ptr + k_rows, mask=k_in, other=0.0)
    v = tl.load(v_ptr + k_rows, mask=k_in, other=0.0)
    dk = tl.zeros([BLOCK_N, DH], tl.float32)
    dv = tl.zeros([BLOCK_N, DH], tl.float32)
    lo = 0
    if CAUSAL:
        lo = (tl.program_id(0) * BLOCK_N // BLOCK_M) * BLOCK_M  # the first query block that sees these keys
    hi = tl.where(tl.program_id(0) * BLOCK_N < Lk, Lq, 0)  # a block past the sequence's keys: nothing
    for i in range(lo, hi, BLOCK_M):
        offs_m = i + tl.arange(0, BLOCK_M)
        q_rows, q_in = _rows(start_ptr, n, h, sq_n, sq_r, sq_h, offs_m, Lq, DH)
        do_rows, _ = _rows(start_ptr, n, h, sd_n, sd_r, sd_h, offs_m, Lq, DH)
        q = tl.load(q_ptr + q_rows, mask=q_in, other=0.0)
        do = tl.load(do_ptr + do_rows, mask=q_in, other=0.0)
        row = nh.to(tl.int64) * lse_len + offs_m
        m = tl.load(lse_ptr + row, mask=offs_m < Lq, other=0.0)
        logl = tl.load(lse_ptr + lse_total + row, mask=offs_m < Lq, other=0.0)
        delta = tl.load(delta_ptr + row, mask=offs_m < Lq, other=0.0)
        s = _scores(q, k, n, h, offs_m, offs_n, Lq, Lk, mask_ptr, sm_n, sm_h, sm_i, sm_j, scale, HAS_MASK, CAUSAL,
                    IEEE)
        p = tl.where(offs_m[:, None] < Lq, tl.exp((s - m[:, None]) - logl[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), IEEE)
        if DROPOUT:
            keep = _keep(seeds_ptr, step_ptr, n, per_run, site_key, h, heads, offs_m, offs_n, P, threshold)
            pd = tl.where(keep, p * drop_scale, 0.0)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        else:
            pd = p
        dv += _dot(tl.trans(pd.to(do.dtype)), do, IEEE)
        ds = tl.where(s > -1e29, p * (dp - delta[:, None]), 0.0)  # a masked-out pair passes no gradient to s
        dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
    tl.store(dk_ptr + k_rows, (dk * scale).to(dk_ptr.dtype.element_ty), mask=k_in)
    tl.store(dv_ptr + k_rows, dv.to(dv_ptr.dtype.element_ty), mask=k_in)
