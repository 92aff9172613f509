"""Runs: plan many targets into batches, dream them here or on Ray, store their records, enrich them.

`dream_targets(loaded, specs, config, out_dir=...)` is the library's whole run: the targets are checked, cut
into batches (`plan`), each batch dreamed packed (`batch`), written atomically and resumably (`store`),
locally (`local`) or over Ray actors (`on_ray`). `enrich` then adds dataset maxima and judges' verdicts;
`describe` gives prompt records their output-side description.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.language import GCGConfig
    >>> records = dream_targets(load("tiny:lm"), ["logits:3"], GCGConfig(n_tokens=3, iters=1, children=4), progress=False)
    >>> records[0]["kind"], records[0]["method"]
    ('prompt', 'gcg')
"""

from dreamy.runs.batch import BatchOutput, dream_batch, error_record
from dreamy.runs.enrich import attach_judges, attach_maxima, judge_records
from dreamy.runs.local import RunRecords, dream_targets
from dreamy.runs.plan import KINDS, batch_config, example_input, plan_batches, unusable_targets
from dreamy.runs.store import OutDirError, ResultsStore, prepare_out_dir, run_info, run_info_of, run_lock

__all__ = ["BatchOutput", "KINDS", "OutDirError", "ResultsStore", "RunRecords", "attach_judges", "attach_maxima",
           "batch_config", "dream_batch", "dream_targets", "error_record", "example_input", "judge_records",
           "plan_batches", "prepare_out_dir", "run_info", "run_info_of", "run_lock", "unusable_targets"]
