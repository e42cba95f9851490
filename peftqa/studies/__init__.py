"""The committed studies: each one module whose `Study` (shape.py: its name, folder, reader, blocks, provenance and
copy of a finished run) reads its folder of committed outputs and renders the docs blocks that cite it. docs holds
the blocks' machinery and the list of studies; run_copy reads a copied whole run; pilot, ablation and experiments are
what the pilot and the sweeps compute; the bench modules measure what the benches commit.
"""
