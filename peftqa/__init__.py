"""peftqa: parameter-efficient fine-tuning on PubMedQA's yes/no questions, measured with honest statistics.

The library behind the DVC stages of stages/ and the `peftqa` command (peftqa.cli):
- params (params.yaml as typed sections), paths (where each stage keeps its files);
- dataset, download: PubMedQA's raw files, validated and split;
- methods/ (one module per PEFT method), families/ (one per model family; resolve and load);
- training/ (the loop, checkpoints, several processes, one training run), features, probe, scoring;
- evaluation, metrics, stats, references, protocols, history, report/;
- tracking (MLflow), serving (the adapter as an MLflow model), environment (the installed lock).
Importing peftqa imports none of them: each module is imported where it is used.
"""
