#!/usr/bin/env bash
# Launch agpo_jax on a Cloud TPU VM slice: create it, copy the code and install it on every
# worker, start the same command on every worker, read the per-worker logs, delete the slice.
# Run `./launch_tpu.sh --help` for the usage; `--dry-run` prints every command instead of
# running it.
set -euo pipefail

readonly PROG=${0##*/}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly ROOT
readonly COMMANDS="create setup run logs stop delete all"

usage() {
  cat <<EOF
Usage: $PROG [--dry-run] COMMAND --name NAME --zone ZONE [options] [-- OVERRIDES...]

Commands:
  create   create the TPU VM slice (an existing READY one of that name is reused)
  setup    copy the code to every worker and install it (venv, requirements.txt, jax[tpu])
  run      start the job on every worker in the background, logging per worker
  logs     show the end of each worker's log (--worker=i for one worker)
  stop     stop the job (SIGTERM: agpo_jax saves a checkpoint before exiting)
  delete   delete the TPU VM slice
  all      create + setup + run

Common options:
  --name NAME            TPU VM name (required)
  --zone ZONE            zone, e.g. us-central2-b (required)
  --project PROJECT      GCP project (default: gcloud's configured project)
  --remote-dir DIR       code directory on the workers, relative to the remote home or
                         absolute (default: agpo_jax)
  --dry-run              print every command, one per line prefixed with '+ ', run none
  -h, --help             this message

create / all:
  --accelerator TYPE     accelerator type, e.g. v4-8, v4-64, v5p-128, v5litepod-16, v6e-8
                         (required by create, and by all without --no-create)
  --runtime VERSION      TPU software version (default from the accelerator: v6e
                         v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
                         v4 and older tpu-ubuntu2204-base)
  --spot | --preemptible request Spot / preemptible capacity
  --no-create            (all) use the existing TPU: skip the create step

setup / all:
  (default)              copy a tarball of the local git HEAD (git archive HEAD); uncommitted
                         changes are not copied (a warning says so when there are some)
  --worktree             copy the working tree instead (without .git, venvs, runs/, caches)
  --git-url URL          clone URL on the workers instead of copying (the workers need
                         access to it)
  --git-ref REF          branch, tag or commit to check out with --git-url (default: HEAD,
                         the remote's default branch)
  --python PY            interpreter for the venv (default: python3.11; installed with apt
                         when the image lacks it, as Ubuntu 22.04 TPU images do)

run / all:
  --config PATH          config file, relative to the code directory
                         (default: configs/default.py)
  --workdir DIR          --workdir of the run, a local path on each worker, relative to
                         the code directory (default: runs/default); copy results off
                         (gcloud compute tpus tpu-vm scp --recurse) before deleting the slice
  --command CMD          run CMD (with bash -c, in the venv, in the code directory) instead
                         of python -m agpo_jax.main --config=... --workdir=...
  -- OVERRIDES...        appended to the command, each quoted, e.g. --config.seed=1
                         (with --command: CMD's "\$@")

logs / stop:
  --worker W             worker index, or all (default: all; log lines are prefixed with
                         the worker's hostname)
  --lines N              (logs) lines from the end of each log (default: 50)
  --follow               (logs) keep following the log (tail -F)
  --fetch DIR            (logs) copy the worker's logs directory into DIR instead (needs a
                         single --worker=i)

delete:
  --yes                  do not ask for confirmation

On the workers: code in ~/REMOTE_DIR (files deleted locally stay there), its venv in
~/REMOTE_DIR/.venv, logs in ~/REMOTE_DIR/logs/worker-HOSTNAME.log (appended to by every run,
after a header line), the job's pid in ~/REMOTE_DIR/logs/worker-HOSTNAME.pid.
The default command adds --config.distributed.initialize=True: on every worker of a slice
jax.distributed.initialize() finds its peers from the TPU VM environment.

Example:
  $PROG all --name my-v4 --zone us-central2-b --accelerator v4-64 --spot \\
      --config configs/default.py --workdir runs/agpo-t07 \\
      -- --config.sampling.temperature=0.7
  $PROG logs --name my-v4 --zone us-central2-b --worker 2 --follow
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$1" >&2
  printf "Run '%s --help' for the usage.\n" "$PROG" >&2
  exit 2
}

note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# Arguments quoted with printf %q, for the remote shell.
quote_cmd() {
  local out="" arg
  for arg in "$@"; do out+="$(printf '%q' "$arg") "; done
  printf '%s' "${out% }"
}

# One argument for display, copy-pastable: bare when safe, else single-quoted (after any
# --flag= prefix, so that long --command= strings stay readable).
show_word() {
  local s=$1 prefix=""
  if [[ $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$s"; return; fi
  if [[ $s =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    s=${BASH_REMATCH[2]}
  fi
  printf "%s'%s'" "$prefix" "${s//\'/\'\\\'\'}"
}

show_cmd() {
  local out="" arg
  for arg in "$@"; do out+="$(show_word "$arg") "; done
  printf '+ %s\n' "${out% }"
}

# Print a command (prefixed '+ ') and, unless --dry-run, run it.
run_cmd() {
  show_cmd "$@"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

# --------------------------------------------------------------------------- arguments
DRY_RUN=0
COMMAND=""
NAME="" ZONE="" PROJECT=""
ACCELERATOR="" RUNTIME="" CAPACITY="" NO_CREATE=0
SOURCE=head GIT_URL="" GIT_REF=HEAD PYTHON=python3.11 REMOTE_DIR=agpo_jax
CONFIG=configs/default.py WORKDIR=runs/default CUSTOM_COMMAND="" CONFIG_SET=0
WORKER=all LINES=50 FOLLOW=0 FETCH_DIR="" YES=0
OVERRIDES=()

need_value() {  # option name, number of remaining arguments
  [[ $2 -ge 2 ]] || die "option $1 needs a value"
}

while [[ $# -gt 0 ]]; do
  arg=$1
  value=""
  # --opt=value is the same as --opt value.
  if [[ $arg == --*=* ]]; then
    value=${arg#*=}
    arg=${arg%%=*}
    set -- "$arg" "$value" "${@:2}"
    case $arg in
      --dry-run|--no-create|--spot|--preemptible|--worktree|--follow|--yes)
        die "option $arg takes no value" ;;
    esac
  fi
  case $arg in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-create) NO_CREATE=1; shift ;;
    --spot|--preemptible)
      [[ -z $CAPACITY || $CAPACITY == "$arg" ]] || die "--spot and --preemptible are exclusive"
      CAPACITY=$arg; shift ;;
    --worktree) SOURCE=worktree; shift ;;
    --follow) FOLLOW=1; shift ;;
    --yes) YES=1; shift ;;
    --name|--zone|--project|--accelerator|--runtime|--git-url|--git-ref|--python|\
    --remote-dir|--config|--workdir|--command|--worker|--lines|--fetch)
      need_value "$arg" $#
      case $arg in
        --name) NAME=$2 ;;
        --zone) ZONE=$2 ;;
        --project) PROJECT=$2 ;;
        --accelerator) ACCELERATOR=$2 ;;
        --runtime) RUNTIME=$2 ;;
        --git-url) GIT_URL=$2; SOURCE=git ;;
        --git-ref) GIT_REF=$2 ;;
        --python) PYTHON=$2 ;;
        --remote-dir) REMOTE_DIR=$2 ;;
        --config) CONFIG=$2; CONFIG_SET=1 ;;
        --workdir) WORKDIR=$2; CONFIG_SET=1 ;;
        --command) CUSTOM_COMMAND=$2 ;;
        --worker) WORKER=$2 ;;
        --lines) LINES=$2 ;;
        --fetch) FETCH_DIR=$2 ;;
      esac
      shift 2 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    --config.*) die "config overrides go after '--': $PROG run ... -- $arg${value:+=$value}" ;;
    -*) die "unknown option '$arg'" ;;
    *)
      [[ -z $COMMAND ]] || die "unexpected argument '$arg' (the command is already '$COMMAND')"
      COMMAND=$arg; shift ;;
  esac
done

# --------------------------------------------------------------------------- validation
[[ -n $COMMAND ]] || die "no command given (one of: $COMMANDS)"
[[ " $COMMANDS " == *" $COMMAND "* ]] || die "unknown command '$COMMAND' (one of: $COMMANDS)"
[[ -n $NAME ]] || die "--name is required (the TPU VM name)"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name '$NAME' is not a TPU name (lowercase letters, digits and hyphens, starting with a letter)"
[[ -n $ZONE ]] || die "--zone is required (e.g. --zone us-central2-b)"
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || die "--worker must be a worker index or 'all', not '$WORKER'"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number, not '$LINES'"
if [[ ${#OVERRIDES[@]} -gt 0 && $COMMAND != run && $COMMAND != all ]]; then
  die "arguments after -- are passed to the job: only 'run' and 'all' take them"
fi
if [[ -n $CUSTOM_COMMAND && $CONFIG_SET == 1 ]]; then
  die "--command replaces the default command: put --config/--workdir in it"
fi
if [[ -n $FETCH_DIR && $WORKER == all ]]; then
  die "--fetch copies one worker's logs: give --worker=i"
fi
if [[ $SOURCE == git && -z $GIT_URL ]]; then die "--git-url needs a URL"; fi
if [[ $COMMAND == create || ($COMMAND == all && $NO_CREATE == 0) ]]; then
  [[ -n $ACCELERATOR ]] || die "--accelerator is required to create a TPU (e.g. --accelerator v4-8)"
fi
if [[ -z $RUNTIME ]]; then
  case $ACCELERATOR in
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    *) RUNTIME=tpu-ubuntu2204-base ;;
  esac
fi

GCLOUD_FLAGS=("--zone=$ZONE")
[[ -z $PROJECT ]] || GCLOUD_FLAGS+=("--project=$PROJECT")
REMOTE_DIR_Q=$(printf '%q' "$REMOTE_DIR")

# Run a shell command string on the workers ($1: all or an index).
ssh_workers() {
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_FLAGS[@]}" --worker="$1" --command="$2"
}

# --------------------------------------------------------------------------- create
do_create() {
  if [[ $DRY_RUN == 0 ]]; then
    local state
    show_cmd gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_FLAGS[@]}" --format='value(state)'
    if state=$(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_FLAGS[@]}" \
                 --format='value(state)' 2>/dev/null); then
      [[ $state == READY ]] || die "TPU '$NAME' exists but is $state: '$PROG delete' it, or wait until it is READY"
      note "TPU '$NAME' already exists and is READY: using it"
      return 0
    fi
  else
    run_cmd gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_FLAGS[@]}" --format='value(state)'
    note "(dry run: assuming TPU '$NAME' does not exist yet)"
  fi
  local cmd=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_FLAGS[@]}"
             --accelerator-type="$ACCELERATOR" --version="$RUNTIME")
  [[ -z $CAPACITY ]] || cmd+=("$CAPACITY")
  run_cmd "${cmd[@]}"
}

# --------------------------------------------------------------------------- setup
copy_code() {
  if [[ $SOURCE == git ]]; then
    # git init + fetch + checkout works for a branch, a tag or a commit, on a fresh directory
    # and on one that holds an earlier copy.
    ssh_workers all "set -e; mkdir -p $REMOTE_DIR_Q && cd $REMOTE_DIR_Q && \
{ [ -d .git ] || git init -q; } && git fetch -q $(printf '%q' "$GIT_URL") $(printf '%q' "$GIT_REF") && \
git checkout -q --force FETCH_HEAD && echo \"[\$(hostname)] code at \$(git rev-parse --short HEAD)\""
    return 0
  fi
  git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 || [[ $SOURCE == worktree ]] ||
    die "$ROOT is not a git checkout: use --worktree or --git-url"
  if [[ $SOURCE == head && -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    note "warning: uncommitted changes are not copied (HEAD is); commit them or use --worktree"
  fi
  TARBALL=${TMPDIR:-/tmp}/agpo_jax-$NAME-$$.tar.gz
  [[ $DRY_RUN == 1 ]] || trap 'rm -f "$TARBALL"' EXIT
  if [[ $SOURCE == head ]]; then
    run_cmd git -C "$ROOT" archive --format=tar.gz -o "$TARBALL" HEAD
  else
    run_cmd tar -C "$ROOT" -czf "$TARBALL" --exclude=./.git --exclude=./.venv --exclude='./venv*' \
      --exclude=./runs --exclude='./workdir*' --exclude=./logs --exclude=__pycache__ \
      --exclude=.pytest_cache --exclude=.hypothesis --exclude='*.egg-info' .
  fi
  run_cmd gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:agpo_jax-code.tar.gz" \
    "${GCLOUD_FLAGS[@]}" --worker=all
  # Extracted over the previous copy: files deleted locally stay on the workers.
  ssh_workers all "set -e; mkdir -p $REMOTE_DIR_Q && tar -xzf ~/agpo_jax-code.tar.gz -C $REMOTE_DIR_Q && \
rm -f ~/agpo_jax-code.tar.gz && echo \"[\$(hostname)] code in $REMOTE_DIR_Q\""
}

install_code() {
  local py
  py=$(printf '%q' "$PYTHON")
  ssh_workers all "set -e; cd $REMOTE_DIR_Q; \
if ! command -v $py >/dev/null; then sudo apt-get update -qq && \
sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $py $py-venv; fi; \
[ -x .venv/bin/python ] || $py -m venv .venv; \
.venv/bin/python -m pip install -q -U pip; \
.venv/bin/python -m pip install -q -r requirements.txt; \
.venv/bin/python -m pip install -q -U 'jax[tpu]'; \
echo \"[\$(hostname)] installed: \$(.venv/bin/python -c 'import jax; print(\"jax\", jax.__version__)')\""
}

# --------------------------------------------------------------------------- run / stop / logs
job_command() {
  local cmd
  if [[ -n $CUSTOM_COMMAND ]]; then
    # `bash -c` so that a compound command (a && b) runs whole under setsid/nohup; the
    # overrides become its positional arguments ("$@" in CMD).
    cmd="bash -c $(quote_cmd "$CUSTOM_COMMAND") bash"
  else
    # initialize=True: jax.distributed.initialize() finds its peers (coordinator, process
    # count and index) from the TPU VM environment; orbax needs it for multi-host checkpoints.
    cmd="python -m agpo_jax.main $(quote_cmd "--config=$CONFIG" "--workdir=$WORKDIR" \
      --config.distributed.initialize=True)"
  fi
  if [[ ${#OVERRIDES[@]} -gt 0 ]]; then cmd+=" $(quote_cmd "${OVERRIDES[@]}")"; fi
  printf '%s' "$cmd"
}

# Remote shell test: is the job in logs/worker-$h.pid alive (a zombie is not)?
# shellcheck disable=SC2016  # expanded on the worker
readonly RUNNING='[ -f $pidfile ] && case "$(ps -o stat= -p "$(cat $pidfile)")" in ""|*Z*) false ;; esac'

start_job() {
  local job
  job=$(job_command)
  # setsid + nohup: the job outlives the ssh session; its pid (= its process group) is kept so
  # that `stop` can signal the whole group.
  ssh_workers all "set -e; cd $REMOTE_DIR_Q; mkdir -p logs; h=\$(hostname); \
log=logs/worker-\$h.log; pidfile=logs/worker-\$h.pid; \
if $RUNNING; then \
echo \"[\$h] a job is already running (pid \$(cat \$pidfile)): $PROG stop --name $NAME first\" >&2; exit 1; fi; \
[ -f .venv/bin/activate ] || { echo \"[\$h] no venv in $REMOTE_DIR_Q: run $PROG setup first\" >&2; exit 1; }; \
. .venv/bin/activate; \
echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) \$h\" >> \$log; \
PYTHONUNBUFFERED=1 setsid nohup $job >> \$log 2>&1 < /dev/null & \
echo \$! > \$pidfile; echo \"[\$h] started pid \$(cat \$pidfile), log $REMOTE_DIR_Q/\$log\""
}

stop_job() {
  ssh_workers "$WORKER" "cd $REMOTE_DIR_Q; h=\$(hostname); pidfile=logs/worker-\$h.pid; \
if $RUNNING; then \
kill -TERM -- -\$(cat \$pidfile) && echo \"[\$h] sent SIGTERM to pid \$(cat \$pidfile)\"; \
else echo \"[\$h] no job running\"; fi"
}

show_logs() {
  if [[ -n $FETCH_DIR ]]; then
    run_cmd mkdir -p "$FETCH_DIR"
    run_cmd gcloud compute tpus tpu-vm scp --recurse "$NAME:$REMOTE_DIR/logs" "$FETCH_DIR" \
      "${GCLOUD_FLAGS[@]}" --worker="$WORKER"
    return 0
  fi
  local tail_opts="-n $LINES"
  [[ $FOLLOW == 0 ]] || tail_opts+=" -F"
  ssh_workers "$WORKER" "cd $REMOTE_DIR_Q && h=\$(hostname) && \
tail $tail_opts logs/worker-\$h.log | sed -u \"s/^/[\$h] /\""
}

# --------------------------------------------------------------------------- delete
do_delete() {
  local cmd=(gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_FLAGS[@]}")
  [[ $YES == 0 ]] || cmd+=(--quiet)
  run_cmd "${cmd[@]}"
}

case $COMMAND in
  create) do_create ;;
  setup) copy_code; install_code ;;
  run) start_job ;;
  logs) show_logs ;;
  stop) stop_job ;;
  delete) do_delete ;;
  all)
    [[ $NO_CREATE == 1 ]] || do_create
    copy_code
    install_code
    start_job ;;
esac
