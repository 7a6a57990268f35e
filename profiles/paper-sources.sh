#!/usr/bin/env bash
# The paper profile's sources, converted from their releases as downloaded into the formats the data stage reads
# (the paths profiles/paper.yaml names). Run from the project root once the downloads are under data/paper/raw/
# (the run book, docs/paper_scale, says what goes where). A source already converted is left as it is: remove its
# folder to convert it again. LLaVA-665k, RoboPoint and LIBERO are read as released, with no conversion.
set -euo pipefail
raw=${EMT_RAW:-data/paper/raw}

convert() {  # RELEASE SRC DST [options]: `emt convert`, unless DST is there
  if [ -e "$3" ]; then echo "$3: there already (remove it to convert again)"; else emt convert "$@"; fi
}

convert img2dataset "$raw/laion400m" data/paper/laion400m       # img2dataset output: .tar shards or parquet
convert img2dataset "$raw/cc12m" data/paper/cc12m
convert vcr "$raw/vcr1/train.jsonl" data/paper/vcr --images "$raw/vcr1/vcr1images"
convert refspatial "$raw/refspatial" data/paper/refspatial      # every annotation file, archives extracted
convert embspatial "$raw/embspatial/embspatial_sft.json" data/paper/embspatial
convert robo2vlm "$raw/robo2vlm" data/paper/robo2vlm
convert lerobot-v2 "$raw/bridge_orig_lerobot" data/paper/bridge_lerobot
# CALVIN conversions differ in which column holds the relative action: name it with --action (see meta/info.json)
convert lerobot-v2 "$raw/calvin_abc_lerobot" data/paper/calvin_abc_lerobot --action action
