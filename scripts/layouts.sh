#!/usr/bin/env bash
# Token layouts compared on the quickstart's data, recipes, time budgets and episodes (docs/layouts.md):
#   collect the quickstart demos (shared, skipped when there) -> per layout: fit rfsq, main, draft with the
#   quickstart configs and the layout's settings -> sweep (every mode, lossless and relaxed speculation)
#   -> budget (forward costs, proposal quality, the speculation ceiling) -> multimodal-offline at p 0.7 and 0.5
#   -> one table and figure over the layouts: runs/layouts/layouts.md, runs/layouts/layouts.png.
# About 27 min per layout on this 2-core CPU; every step resumes or is skipped when its output exists, so a
# killed run continues where it stopped. LAYOUTS="g4x2 scalar" picks layouts (default: all, in this order).
set -euo pipefail
data=data/quickstart/libero_spatial runs_root=runs/layouts registry_root=checkpoints/layouts fit_extra=()
registry=$registry_root runs=$runs_root
source "$(dirname "$0")/pipeline.sh"  # set-up, banner, fit_step (the quickstart's recipes)

# name: positions latent_dim group num_levels num_layers heads  (latent = positions x latent_dim scalars; heads:
# "-" one free logit per code; "all" factored, a code's logit its digits' logits plus a joint correction on every
# layer; N factored with the joint correction on layers 1..N only: MainModelConfig.factored / joint_layers)
declare -A SPEC=(
  [g4x2]="2 4 4 7 4 -"      # 8 scalars in 2 tokens of 4 (2,401 codes each)
  [g4x1]="1 4 4 7 4 -"      # 4 scalars in 1 token of 4
  [scalar]="8 16 1 7 8 -"   # the original layout: 128 one-scalar tokens of 7 codes
  [g4x4]="4 4 4 7 4 -"      # 16 scalars in 4 tokens of 4
  [g2x4]="4 2 2 7 4 -"      # 8 scalars in 4 tokens of 2 (49 codes each)
  [g4x2f]="2 4 4 7 4 all"   # g4x2, factored heads
  [g4x2f1]="2 4 4 7 4 1"    # g4x2, factored heads, joint correction on layer 1 only
)
ORDER=(g4x2 g4x1 scalar g4x4 g2x4 g4x2f g4x2f1)
read -r -a chosen <<< "${LAYOUTS:-${ORDER[*]}}"

banner "collect the quickstart demos ($data; finished episodes are kept)"
$PY -m rsd_pl collect --config configs/quickstart/collect.yaml --out "$data"
for name in "${chosen[@]}"; do
  [[ -n "${SPEC[$name]:-}" ]] || { echo "unknown layout '$name' (known: ${ORDER[*]})" >&2; exit 2; }
  read -r positions latent_dim group levels layers joint <<< "${SPEC[$name]}"
  registry=$registry_root/$name runs=$runs_root/$name
  banner "layout $name: $positions positions x $latent_dim scalars, tokens of $group, K $levels, $layers layers," \
    "heads: $joint"
  layout=(--positions "$positions" --latent_dim "$latent_dim" --group "$group" --num_levels "$levels"
          --num_layers "$layers")
  case $joint in
    -) heads=() ;;
    all) heads=(--factored true) ;;
    *) heads=(--factored true --joint_layers "$joint") ;;
  esac
  # the tokenizer gets the quickstart's time budget (max_time 1.5 min) rather than its 40 epochs: 40 epochs
  # (about 25 s) leave the small latents far from their floor (8 scalars: 0.034 after 40 epochs)
  fit_extra=("${layout[@]/#--/--model.init_args.}" --trainer.max_epochs 150)
  fit_step rfsq
  fit_extra=("${layout[@]/#--/--model.init_args.network.}" "${heads[@]/#--/--model.init_args.network.}")
  fit_step main
  fit_extra=()
  fit_step draft
  banner "layout $name: sweep on the quickstart episodes (logged episodes are reused)"
  $PY -m rsd_pl sweep --config configs/layouts/sweep.yaml --eval.registry "$registry" --out "$runs/sweep"
  if [[ ! -f "$runs/budget.json" ]]; then
    banner "layout $name: budget"
    $PY -m rsd_pl budget --registry "$registry" --data "$data" --out "$runs/budget.json"
  fi
  for p in 0.7 0.5; do
    if [[ ! -f "$runs/multimodal_offline_p$p.json" ]]; then
      banner "layout $name: multimodal-offline p_a $p"
      $PY -m rsd_pl multimodal-offline "${layout[@]}" "${heads[@]}" --p_a "$p" --out "$runs/multimodal_offline_p$p.json"
    fi
  done
done
banner "the comparison over every layout with results"
$PY -m rsd_pl layouts --runs "$runs_root" --registry "$registry_root"
