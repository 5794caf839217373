#!/usr/bin/env bash
# Run a command (`make test`'s pytest) with the one-node SLURM cluster of scripts/slurm-local.sh up, so
# that the `slurm`-marked tests exercise the submitit executor on a real scheduler:
# - a cluster that is already up is used and left up;
# - otherwise, as root with apt-get (or the packages installed), it is started before the command and
#   stopped after it, also when the command fails or is interrupted;
# - otherwise (not root: a laptop) nothing is started and the slurm tests skip, saying how to enable them.
# CAMRI_SLURM=0 starts nothing (the slurm tests then skip; under CI=true a skipped slurm test fails).
# The command's exit status is this script's.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cluster=$here/slurm-local.sh
say() { echo "with-slurm: $*" >&2; }

packages_installed() {
    command -v dpkg-query >/dev/null && [ -z "$("$cluster" missing)" ]
}

started=0
stop() {
    if [ "$started" = 1 ]; then
        started=0
        "$cluster" down || say "stopping the SLURM cluster failed; stop it with: $cluster down"
    fi
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

case ${CAMRI_SLURM:-1} in
    0 | off | no | false)
        say "CAMRI_SLURM=${CAMRI_SLURM}: not starting the SLURM cluster (the slurm tests skip)" ;;
    *)
        if "$cluster" status >/dev/null 2>&1; then
            say "using the SLURM cluster that is up already (left up afterwards)"
        elif [ "$(id -u)" = 0 ] && { command -v apt-get >/dev/null || packages_installed; }; then
            say "starting the one-node SLURM cluster for the slurm tests (CAMRI_SLURM=0 to skip them)"
            if "$cluster" up; then
                started=1
            else
                say "the SLURM cluster did not start (see above): the slurm tests skip (fail under CI=true)"
            fi
        else
            say "not root: the slurm tests skip (to run them: sudo $cluster up, then this command again)"
        fi ;;
esac

if "$cluster" status >/dev/null 2>&1; then
    eval "$("$cluster" env)"  # SLURM_CONF: sinfo, squeue and sbatch find the cluster
fi
"$@"
