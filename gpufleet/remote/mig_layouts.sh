#!/bin/sh
# gpufleet: bring each GPU listed in /etc/gpufleet/mig-layouts to its MIG layout. Written by
# gpufleet; run at boot by gpufleet-mig-layouts.service (GPU and compute instances never survive
# a reboot, and from Hopper on neither does MIG mode) and by gpufleet's deploy when a layout
# differs. Each line: "<GPU index> <profile>,<profile>,..." in creation order, or
# "<GPU index> disabled". A GPU already in its layout is left alone.
set -u
layouts=${1:-/etc/gpufleet/mig-layouts}
status=0

say() {
    echo "gpufleet-mig-layouts: GPU $1: $2"
}

mig_mode() {
    nvidia-smi -i "$1" --query-gpu=mig.mode.current --format=csv,noheader 2>&1
}

# The profiles of the GPU's GPU instances, sorted, on one line.
gpu_instances() {
    nvidia-smi mig -i "$1" -lgi 2>/dev/null | awk '$1 == "|" && $3 == "MIG" { print $4 }' |
        sort | tr '\n' ' '
}

compute_instance_count() {
    nvidia-smi mig -i "$1" -lci 2>/dev/null | awk '$1 == "|" && $4 == "MIG"' | wc -l
}

while read -r gpu profiles; do
    case $gpu in '' | '#'*) continue ;; esac
    if [ "$profiles" = disabled ]; then
        [ "$(mig_mode "$gpu")" != Enabled ] && continue
        nvidia-smi mig -i "$gpu" -dci >/dev/null 2>&1
        nvidia-smi mig -i "$gpu" -dgi >/dev/null 2>&1
        nvidia-smi -i "$gpu" -mig 0 || status=1
        continue
    fi
    if [ "$(mig_mode "$gpu")" != Enabled ]; then
        nvidia-smi -i "$gpu" -mig 1
        if [ "$(mig_mode "$gpu")" != Enabled ]; then
            say "$gpu" "MIG mode is still not enabled (pending a GPU reset: stop what uses the GPU, then reset it or reboot)"
            status=1
            continue
        fi
    fi
    wanted=$(echo "$profiles" | tr ',' '\n' | sort | tr '\n' ' ')
    count=$(echo "$profiles" | tr ',' '\n' | wc -l)
    present=$(gpu_instances "$gpu")
    if [ "$present" = "$wanted" ] && [ "$(compute_instance_count "$gpu")" -eq "$count" ]; then
        continue
    fi
    if [ -n "$present" ]; then
        # An interrupted run can leave GPU instances without compute instances: -dci may find
        # none; -dgi must succeed ("In use by another client" while a process runs on one).
        nvidia-smi mig -i "$gpu" -dci >/dev/null 2>&1
        if ! nvidia-smi mig -i "$gpu" -dgi; then
            say "$gpu" "its GPU instances could not be destroyed"
            status=1
            continue
        fi
    fi
    nvidia-smi mig -i "$gpu" -cgi "$profiles" -C || status=1
done <"$layouts"
exit $status
