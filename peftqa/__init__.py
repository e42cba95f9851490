"""peftqa: a DVC pipeline for PEFT on PubMedQA yes/no QA. One module per DVC stage, plus shared code."""
