#!/usr/bin/env bash
# Run by slurm/train.sbatch through `srun`, once per node: `accelerate launch` (torchrun) for
# this node's share of the processes. Everything that differs per node ($SLURM_NODEID) is read
# HERE, on the node, never on the submit host; the job-wide values come from train.sbatch in
# the environment (VIT_DIST_PYTHON, VIT_DIST_MAIN_ADDR, VIT_DIST_PORT, VIT_DIST_PROCS_PER_NODE).
#
# Signals. The trainer ranks checkpoint and exit on SIGUSR1 or SIGTERM (tested on SLURM 22.05,
# tests/integration/test_launch.py):
# - SIGUSR1 (`--signal=USR1@120` before the time limit, `scancel --signal=USR1`) is delivered
#   by SLURM to the srun TASK, i.e. to this script, not to its children. So this script
#   forwards it to the ranks (the agent's children). The agent itself (torchrun inside
#   `accelerate launch`) starts with SIGUSR1 ignored (inherited across exec; the ranks install
#   their own handler over it): torchrun handles only TERM/INT/HUP/QUIT, accelerate cannot pass
#   its --signals_to_handle, and SIGUSR1's default action would kill the agent and the ranks
#   with it if anyone signals the whole process group. A rank signalled twice checkpoints once.
# - SIGTERM (preemption, `scontrol requeue`, scancel, the time limit itself) reaches every
#   process of the step from SLURM directly; the agent forwards it to the ranks too and waits up
#   to 30 s for them. This script only survives it (if it exited, slurmstepd would kill the rest
#   of the step at once) and sends the agent no second SIGTERM, which would cut that wait short.
set -uo pipefail

# The body is one function, parsed whole before it runs: editing this file (git pull) while
# a job runs cannot change what the running job executes.
main() {
    : "${VIT_DIST_PYTHON:?set by slurm/train.sbatch}" "${VIT_DIST_MAIN_ADDR:?}" "${VIT_DIST_PORT:?}"
    nodes=${SLURM_NNODES:?run me under srun}
    ppn=${VIT_DIST_PROCS_PER_NODE:-1}
    total=$((nodes * ppn))

    launch=(
        "$VIT_DIST_PYTHON" -m accelerate.commands.launch
        --num_machines "$nodes" --machine_rank "$SLURM_NODEID" --num_processes "$total"
        --main_process_ip "$VIT_DIST_MAIN_ADDR" --main_process_port "$VIT_DIST_PORT"
        --rdzv_backend static --same_network --max_restarts 0
        --mixed_precision no --dynamo_backend no  # precision is vit_dist's `precision=` key
    )
    ((total > 1)) && launch+=(--multi_gpu)  # torchrun; on CPU with ACCELERATE_USE_CPU=1 (gloo)

    echo "[node $SLURM_NODEID/$nodes ${SLURMD_NODENAME:-$(hostname)}] $ppn process(es), main process $VIT_DIST_MAIN_ADDR:$VIT_DIST_PORT"

    trap '' USR1 # inherited by the agent (and its ranks until they install their handler)
    "${launch[@]}" "$@" &
    agent=$!

    forward_usr1() {
        local kids
        kids=$(pgrep -P "$agent" | tr '\n' ' ')
        echo "[node $SLURM_NODEID] SIGUSR1 -> ranks ${kids:-(none yet)}"
        [[ -n $kids ]] && kill -USR1 $kids 2>/dev/null
        return 0
    }
    trap forward_usr1 USR1
    trap 'echo "[node $SLURM_NODEID] SIGTERM: waiting for the ranks to checkpoint"' TERM
    trap ':' INT

    # `wait` returns early (status > 128) whenever a trapped signal arrives: wait again until the
    # agent itself has exited, and exit with its status.
    while :; do
        wait "$agent"
        rc=$?
        kill -0 "$agent" 2>/dev/null || break
    done
    exit "$rc"
}

main "$@"
exit $?
