"""The committed studies: each reads its folder of committed outputs and renders the docs blocks that cite it (docs
holds the blocks' machinery; study, official, results, frontier, pilot and ablation the studies; the bench modules
measure what the benches commit).
"""
