"""peftqa: parameter-efficient fine-tuning on PubMedQA's yes/no questions, measured with honest statistics.

The library behind the DVC stages of stages/ and the `peftqa` command (peftqa.cli), one concern a subpackage:
- params/ (params.yaml as typed sections, every method's knobs, each family's traits), catalog (every output a
  stage writes: path, format, reader, writer), errors, files (atomic writes), stops (clean stops), compute (the
  precision a model computes in);
- data/ (PubMedQA fetched, validated and split; the frozen encoder's features), methods/ (one module per PEFT
  method), families/ (one per model family), training/ (one method's training), evaluation/ (scoring, metrics,
  statistics, references, protocols), mlops/ (MLflow), report/ (stage report), studies/ (the committed studies and
  their docs blocks), cli/ (the command).
Importing peftqa imports none of them: each module is imported where it is used.
"""
