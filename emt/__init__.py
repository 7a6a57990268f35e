"""EmbodiedMidtrain, reproduced: select VLM data close to VLA data, mid-train, fine-tune a VLA, evaluate

Modules:

- `emt.corpus_embodied`: The four embodied-oriented VLM sources of the embedded corpus: spatial referring, embodied spatial QA, robot-frame VQA and affordance points, generated from Meta-World scenes with answers computed from the simulator's ground truth.
- `emt.corpus_general`: Four small generated VLM sources that stand in for the paper's general data: web captions (LAION), dense captions (CC-12M), instruction QA (LLaVA-665k) and commonsense multiple choice (VCR).
- `emt.corpus_libero`: LIBERO demonstrations from a scripted expert, written in LIBERO's own HDF5 layout: the data a LIBERO VLA is fine-tuned on when the released data sets are not at hand.
- `emt.corpus_vla`: VLA demonstrations from Meta-World's scripted experts: seeded variations, one camera frame per step, the 4-dim actions as chunks, and only successful episodes.
- `emt.data`: The data layer: the sample schema, validation with a skip report, readers for LLaVA, HF, LeRobot and LIBERO data, and writers for a curated mixture.
- `emt.scores`: The score file every selection method writes and the select stage reads, and the deterministic global top-K that turns scores into a mixture.
- `emt.sim`: Meta-World tasks with seeded variations, upright offscreen frames, camera projection, ground-truth object states, the scripted experts, and an instruction for every task.
- `emt.stats`: The statistics every report in emt rests on: paired bootstrap effects and their verdicts, Wilson intervals of success rates, intervals over seeds and over question sources, and the calibration of a classifier."""

__version__ = "0.0.1"
