"""Each task family's data (glue, squad, xsum: from the Hub or local files) and the tokenisation cache."""


def hub_dataset(task) -> tuple[str, str]:
    """The Hub dataset ``task`` (a ``cfg.task``) reads without ``data.dir``, and what to pass instead."""
    from . import glue, squad, xsum

    if task.family == "glue":
        return glue.HUB, glue.HINT
    if task.family == "squad":
        version = 2 if task.get("version_2_with_negative") else 1
        return squad.HUB[version], f"pass data.dir=/dir/with/{squad.FILES[version, 'train']}"
    return xsum.HUB, "pass data.dir=/dir/with/train.jsonl"
