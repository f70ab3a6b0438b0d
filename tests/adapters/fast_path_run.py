"""Run one lm-eval evaluation in a fresh interpreter and print what the fast-path tests compare.

    python -m tests.adapters.fast_path_run MODEL MODEL_ARGS TASKS LIMIT
"""

import json
import sys


def main() -> None:
    model, model_args, tasks, limit = sys.argv[1], sys.argv[2], sys.argv[3].split(","), int(sys.argv[4])
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval_ext.tasks_dir import shipped_tasks_dir

    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, limit=limit, log_samples=True,
                                  task_manager=TaskManager(include_path=[str(shipped_tasks_dir())],
                                                           include_defaults=False), verbosity="WARNING")
    samples = {f"{task}/{s['doc_id']}": s["resps"] for task, rows in out["samples"].items() for s in rows}
    config = out["config"]
    json.dump({
        "samples": samples,
        "results": out["results"],
        "request_cache": config.get("request_cache"),
        "tokenizer_info": {k: out.get(k) for k in ("tokenizer_pad_token", "tokenizer_eos_token",
                                                      "tokenizer_bos_token", "eot_token_id", "max_length")},
        "plan": config.get("lm_eval_ext_plan"),
        "backend_imported": "lm_eval.models.huggingface" in sys.modules,
    }, sys.stdout, default=str)


if __name__ == "__main__":
    main()
