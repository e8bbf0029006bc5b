#!/usr/bin/env bash
# The LongSSM / Buitrago Ruiz & Gu experiments as sweeps (configs in src/longssm/configs/paper/; the README's
# "Reproducing the paper" maps each figure to its command).
# Usage: bash experiments/paper.sh SCALE OUT_DIR FIGURE ...   SCALE: cpu or paper; FIGURE: fig4 ... fig10,
# interventions, p_zero. Each figure's table and plots land in OUT_DIR/<figure>_<SCALE>/; rerunning resumes.
set -euo pipefail
scale=$1 out=$2
shift 2
case $scale in
  cpu) zero_T=16,32,64,128,256,512,1024 prev_T=$zero_T fig5_T=16,32,64,128 fig9_d=64,128 fig9_T=16,64,256,1024
       eval=(--eval-tokens 32768) ;;  # RESULTS.md's settings
  paper) zero_T=16,32,64,128,256,512,1024,2048,4096 prev_T=16 fig5_T=16,32,64,128,256,512,1024 fig9_d=256,768
         fig9_T=16,64,256,1024,4096 eval=() ;;
  *) echo "SCALE must be cpu or paper; got $scale" >&2; exit 2 ;;
esac
sweep() {  # sweep FIGURE GRID-ARGS...
  local fig=$1
  shift
  longssm sweep --config "paper/${fig}_${scale}" --out "$out/${fig}_${scale}" --no-progress "${eval[@]}" "$@"
}
for fig in "$@"; do
  case $fig in
    fig4|fig7|fig8) sweep "$fig" --grid state.scheme=zero,previous ;;
    fig5) sweep fig5 --grid model.family=mamba,s5 --grid train.seq_len=$fig5_T ;;
    fig6) sweep fig6 --grid state.scheme=zero --grid train.seq_len=$zero_T
          sweep fig6 --grid state.scheme=previous --grid train.seq_len=$prev_T ;;
    fig9) sweep fig9 --grid model.d_model=$fig9_d --grid train.seq_len=$fig9_T ;;
    fig10) sweep fig10 --grid train.seq_len=16,32,64,128 --grid state.scheme=zero,previous ;;
    interventions) sweep interventions --grid state.scheme=zero,random_noise,fitted_noise,state_passing,previous ;;
    p_zero) sweep p_zero --grid state.p_zero=0,0.1,0.25,0.5
            sweep p_zero --grid state.scheme=zero --grid state.p_zero=0 ;;
    *) echo "unknown figure $fig (fig4 ... fig10, interventions, p_zero)" >&2; exit 2 ;;
  esac
done
