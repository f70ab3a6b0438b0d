"""Dataset loader for the shipped tasks: reads ``data/<name>_<split>.jsonl`` next to this file.

Used through ``custom_dataset: !function ext_data.load`` so the tasks work from any working
directory (a relative ``data_files`` path in YAML would be resolved against the caller's CWD).
"""

from pathlib import Path

import datasets

DATA_DIR = Path(__file__).resolve().parent / "data"


def load(data_name: str, **_metadata) -> datasets.DatasetDict:
    splits = {}
    for path in sorted(DATA_DIR.glob(f"{data_name}_*.jsonl")):
        split = path.stem[len(data_name) + 1 :]
        splits[split] = datasets.Dataset.from_json(str(path))
    if not splits:
        raise FileNotFoundError(f"no data files {DATA_DIR}/{data_name}_<split>.jsonl")
    return datasets.DatasetDict(splits)
