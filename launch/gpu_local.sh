#!/usr/bin/env bash
# jaxbn on the GPUs of one machine: one process, a data-parallel mesh over all its GPUs.
#
#   bash launch/gpu_local.sh --config configs/full.py --workdir /tmp/full \
#       -- --config.model.arch=resnet50 --config.model.dtype=bfloat16
#   bash launch/gpu_local.sh --gpus 0,1 --dry-run --config configs/bn_only.py --workdir /tmp/bn
#
# One process drives every visible GPU (jit over a Mesh of all devices), so no
# jax.distributed set-up is needed; config.batch_size must be a multiple of the
# number of GPUs.
set -euo pipefail

quote() {  # words as one shell-quoted line, like Python's shlex.join
  local out=() w
  for w in "$@"; do
    if [[ -n "$w" && "$w" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$w")
    else
      out+=("'${w//\'/\'\"\'\"\'}'")
    fi
  done
  echo "${out[*]}"
}

usage() {
  cat <<'EOF'
usage: launch/gpu_local.sh --config FILE --workdir DIR [--gpus LIST] [--python PYTHON]
                           [--dry-run] [-- JAXBN_MAIN_FLAGS...]

Runs `python -m jaxbn.main --config=FILE --workdir=DIR ...` on this machine's GPUs.
Options:
  --config FILE    jaxbn config file
  --workdir DIR    jaxbn workdir
  --gpus LIST      GPUs to use, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES; default: all)
  --python PYTHON  interpreter with jaxbn and jax[cuda12] installed (default: python)
  --dry-run        print the command, run nothing (works without GPUs)
  -h, --help       this help
Everything after -- goes to jaxbn.main unchanged.
EOF
}

config="" workdir="" gpus="" python="python" dry_run=0
while (($#)); do
  case "$1" in
    --config) config="${2:?--config needs a value}"; shift 2 ;;
    --config=*) config="${1#*=}"; shift ;;
    --workdir) workdir="${2:?--workdir needs a value}"; shift 2 ;;
    --workdir=*) workdir="${1#*=}"; shift ;;
    --gpus) gpus="${2:?--gpus needs a value}"; shift 2 ;;
    --gpus=*) gpus="${1#*=}"; shift ;;
    --python) python="${2:?--python needs a value}"; shift 2 ;;
    --python=*) python="${1#*=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "error: unknown argument '$1' (jaxbn.main flags go after --)" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$config" || -z "$workdir" ]]; then
  echo "error: --config and --workdir are required" >&2; usage >&2; exit 2
fi

cmd=()
if [[ -n "$gpus" ]]; then
  cmd=(env "CUDA_VISIBLE_DEVICES=$gpus")
fi
cmd+=("$python" -m jaxbn.main "--config=$config" "--workdir=$workdir" "$@")
quoted=$(quote "${cmd[@]}")
if ((dry_run)); then
  echo "$quoted"
  exit 0
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "error: nvidia-smi not found: no NVIDIA driver on this machine. On CPU or a TPU VM" \
       "run python -m jaxbn.main directly; --dry-run prints the command." >&2
  exit 2
fi
if ! XLA_PYTHON_CLIENT_PREALLOCATE=false "$python" -c 'import jax, sys; sys.exit(0 if jax.devices("gpu") else 1)' >/dev/null 2>&1; then
  echo "error: JAX in '$python' sees no GPU: install the CUDA build," \
       "pip install 'jax[cuda12]<0.11', in that environment." >&2
  exit 2
fi
echo "[gpu_local] $quoted" >&2
exec "${cmd[@]}"
