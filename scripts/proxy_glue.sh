#!/usr/bin/env bash
# Real-data check that every method of Table 2 trains at its own learning rate (conf/hparams/<method>.yaml):
# the real pretrained all-MiniLM-L6-v2 (a proxy for RoBERTa-base: same module names, 6 layers) on the real
# GLUE CoLA, MRPC and STS-B (train + dev), 3 seeds side by side per job, fewer epochs than Table 8 (EPOCHS).
#   scripts/proxy_glue.sh [store] [extra hydra overrides...]      (a GPU; MINILM and GLUE point at local copies)
# Writes one results JSON per run under <store> (default results/proxy/runs); the tables and the comparison with
# the majority class: python scripts/proxy_summary.py <store>
set -euo pipefail
STORE=${1:-results/proxy/runs}; shift || true
EPOCHS=${EPOCHS:-3}
export DYNRANK_MINILM=${MINILM:-../shared/models/all-MiniLM-L6-v2}
python -m dynrank.train -m model="${MODEL:-minilm}" task="${TASKS:-cola,mrpc,stsb}" \
  method="${METHODS:-full,bitfit,houlsby,pfeiffer,lora,adalora,dora}" 'seeds=[1,2,3]' \
  data.dir="${GLUE:-../shared/data/glue}" train.epochs="$EPOCHS" results.store="$STORE" \
  train.bf16=true train.cuda_graphs=true train.progress=false hydra.sweep.dir=multirun/proxy "$@"
