"""Scoring and judging: batched scoring (scoring), a saved adapter's predictions on a split (predictions), the
metrics, the paired statistics (stats), the reference rows (references, few_shot) and the repeated-seed and k-fold
protocols (protocols).
"""
