"""EmbodiedMidtrain, reproduced: select VLM data close to VLA data, mid-train, fine-tune a VLA, evaluate

Modules:

- `emt.ability`: The paper's appendix check: every VLM (the base one and each mid-trained one) answers held-out questions of every VLM source, scored the source's own way, so that a table shows general and embodied ability before and after mid-training.
- `emt.backbones`: Tiny and real VLM backbones (InternVL, Qwen2.5-VL, Qwen3-VL, SmolVLM) as plain Hugging Face checkpoints: tokenizer, model, processor, save/load, and the batch encoding every training stage uses.
- `emt.base_vlm`: The "off-the-shelf" VLM every later stage starts from: a hub or local checkpoint at paper scale, or, in the embedded default, a small VLM with its own tokenizer, pretrained here on the general sources with the SFT engine.
- `emt.calvin_client`: CALVIN ABC→D in CALVIN's own environment, as a client of `emt serve`: the 1,000 chains of 5 subtasks, resumable, one command.
- `emt.cli`: The `emt` command: check and switch params profiles, build the embedded corpus, the README and the docs site.
- `emt.core`: Paths from the repository root, atomic writes, seeding, errors and progress: the helpers every stage uses.
- `emt.corpus`: The embedded corpus: eight small VLM sources standing in for the paper's eight, and Meta-World demonstrations standing in for the VLA data, generated offline and deterministically from a seed.
- `emt.corpus_embodied`: The four embodied-oriented VLM sources of the embedded corpus: spatial referring, embodied spatial QA, robot-frame VQA and affordance points, generated from Meta-World scenes with answers computed from the simulator's ground truth.
- `emt.corpus_general`: Four small generated VLM sources that stand in for the paper's general data: web captions (LAION), dense captions (CC-12M), instruction QA (LLaVA-665k) and commonsense multiple choice (VCR).
- `emt.corpus_libero`: LIBERO demonstrations from a scripted expert, written in LIBERO's own HDF5 layout: the data a LIBERO VLA is fine-tuned on when the released data sets are not at hand.
- `emt.corpus_vla`: VLA demonstrations from Meta-World's scripted experts: seeded variations, one camera frame per step, the 4-dim actions as chunks, and only successful episodes.
- `emt.data`: Read every VLM and VLA source named in `params.yaml` through the data layer, check it, and store it as a memory-mapped Hugging Face dataset for the stages that follow.
- `emt.docs`: Build the documentation site offline with one command: nbdev's processed notebooks, rendered by Sphinx.
- `emt.dose`: Is the treatment delivered? Mid-train the base VLM at a ladder of doses and check, before any VLA, that the mid-trained VLM measurably has the embodied skill its mixture was chosen for and keeps its general ability.
- `emt.estimator`: A single linear layer on the frozen features that tells VLA samples from VLM samples: trained with BCE on balanced batches, stopped at 90% validation accuracy, checked for calibration, and used to score every sample of the pool; plus the random and feature-distance baselines, written in the same score format.
- `emt.eval_external`: SimplerEnv-Bridge and CALVIN ABC→D adapters with their official protocols, written against their real APIs and imported lazily. **Not run here**: neither simulator can be installed on these machines; tested against stand-ins laid out as their packages are.
- `emt.evaluation`: One evaluation harness for every benchmark: official initial states and step limits, action chunks, parallel seeded workers, a resumable results log, success rates with Wilson intervals, and videos.
- `emt.features`: One pooled vector per sample of every VLM and VLA source, from a chosen layer of the frozen base VLM: batched, sharded on disk, resumable and split across processes; `load_features` reads them back for the gap, estimator and select stages.
- `emt.fixtures`: Small synthetic inputs for the examples and tests: images, data sets in their release layouts, feature shards, throwaway projects for each stage, and a toy benchmark.
- `emt.gap`: How far VLA data lies from VLM data in the frozen VLM's feature space: squared MMD between every pair of sources with permutation p-values (Fig. 2a), a t-SNE map (Fig. 2b) and the diversity score of each group (appendix A.5).
- `emt.launch`: Runs a training function on several processes (one per GPU) with `accelerate launch`, from inside a pipeline stage, and hands its report back.
- `emt.libero`: LIBERO offline through its own Python API: a generated config (no prompt, no download), the suites' fixed initial states and step limits, upright agentview frames, and a privileged scripted policy that proves the harness right.
- `emt.llamafactory`: Mid-training on the paper's own engine: emt's mixture and recipe as a LLaMA-Factory run, launched in LLaMA-Factory's environment, and its saved VLM adopted.
- `emt.metaworld`: The Meta-World adapter of the evaluation harness (the embedded default's benchmark): MT10 with the corpus' camera, resolution, instructions and 4-dim actions, evaluation variations the corpus never drew, and the scripted experts as the ceiling.
- `emt.metaworld_sim`: Meta-World tasks with seeded variations, upright offscreen frames, camera projection, ground-truth object states, the scripted experts, and an instruction for every task.
- `emt.midtrain`: Mid-training: supervised fine-tuning of the base VLM on each selected mixture, with the SFT engine; one plain HF checkpoint per selection method.
- `emt.params`: `params.yaml`: one section per pipeline stage, a schema that checks it, and the paper-scale profile.
- `emt.policy`: The VLA model (a VLM with learnable action queries and a two-branch action head), its action statistics, its checkpoint format, and the policy that benchmarks and robots drive.
- `emt.policy_client`: A simulator's client of `emt serve`: action chunks from a VLA served over a local socket. It needs only the standard library and numpy, so it runs in a simulator's own environment (CALVIN's torch 1.13, SimplerEnv's) without emt: copy this file there, or install emt without its dependencies.
- `emt.ppl`: Two of the paper's selection baselines: the perplexity of each pool sample under the VLM fine-tuned on VLA data with the actions written as text (`vla_ppl`), and that perplexity minus the base VLM's (`delta_ppl`).
- `emt.release`: The paper's data sets as their releases ship them (img2dataset shards, VCR, RefSpatial, EmbSpatial, Robo2VLM, LeRobot v2.x), converted into sources the `data` stage reads.
- `emt.report`: The paper's tables and figures regenerated from this run's metrics, each beside the paper's own numbers and labelled "paper" or "this run" with the run's profile and scale, plus a check of each of the paper's qualitative findings.
- `emt.samples`: The data layer: the sample schema, validation with a skip report, readers for LLaVA, HF, LeRobot and LIBERO data, and writers for a curated mixture.
- `emt.scores`: The score file every selection method writes and the select stage reads, and the deterministic global top-K that turns scores into a mixture.
- `emt.select`: Keep the global top-K of the pool under each scoring method, deterministically; optionally Gumbel top-k (importance resampling) or per-source / per-cluster quotas; write each mixture in the data layer's formats, and show what was kept and why (Fig. 4a, 5, 6).
- `emt.serve`: A VLA served to simulators that run in their own environments: `emt serve CHECKPOINT`, a small protocol over a local socket, and a client that needs only numpy.
- `emt.sft`: Supervised fine-tuning of a VLM on chat samples, loss on assistant tokens only, with `accelerate`: the same loop pretrains the embedded base VLM and mid-trains it later, on one CPU or many GPUs, and resumes after a kill.
- `emt.stage`: Runs one pipeline stage so that a failure loses nothing: the params are checked before anything happens, the stage's previous outputs stay until it succeeds, and a summary of its numbers is what DVC compares.
- `emt.stats`: The statistics every report in emt rests on: paired bootstrap effects and their verdicts, Wilson intervals of success rates, intervals over seeds and over question sources, and the calibration of a classifier.
- `emt.toy_projects`: Throwaway projects for the training stages: what the stages before each one would have left, at the smallest sizes that still train.
- `emt.vla`: VLM -> VLA fine-tuning with the VLM4VLA recipe: learnable action queries read out of the VLM's last layer, a small two-branch MLP head (Huber loss on the arm, BCE on the gripper), trained with `accelerate`, saved as self-contained checkpoints that `emt.policy.load_policy` turns into a benchmark policy."""

__version__ = "0.0.1"
