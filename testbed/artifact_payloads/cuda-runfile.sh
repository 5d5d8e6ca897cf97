#!/bin/sh
# Stand-in for NVIDIA's @RUNFILE_NAME@, built by gpufleet's testbed (testbed/standin_artifacts.py;
# gpufleet/stack/SOURCES.md, "CUDA runfile and cuDNN archive", cites what it copies). It takes the
# real installer's options and writes the real toolkit layout with stand-in files. Its payload, a
# base64 tar.gz laid out like the real `--extract=` output, starts on line @PAYLOAD_LINE@.
# GPUFLEET_STANDIN_ROOT, set only by unit tests, prefixes every absolute path it writes.

R="${GPUFLEET_STANDIN_ROOT:-}"
SELF="$0"
DRIVER_VERSION=@DRIVER_VERSION@
CUDA_SERIES=@CUDA_SERIES@
STANDIN_LOG_DIR="$R/var/log/gpufleet-standin"

# Every run, refused or not, leaves one line for the tests to count.
mkdir -p "$STANDIN_LOG_DIR" 2>/dev/null
printf '%s %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$SELF $*" \
    >>"$STANDIN_LOG_DIR/runfile-runs.log" 2>/dev/null

usage() {
    cat <<USAGE
Usage: sh $SELF [options]
  --silent                  install without questions (implies accepting the EULA)
  --driver                  install the NVIDIA driver $DRIVER_VERSION
  --toolkit                 install the CUDA $CUDA_SERIES Toolkit
  --samples                 install the CUDA $CUDA_SERIES Samples
  --toolkitpath=<path>      toolkit location (default /usr/local/cuda-$CUDA_SERIES)
  --samplespath=<path>      samples location (default \$HOME)
  --installpath=<path>      location of the toolkit and the samples
  --defaultroot=<path>      root of the libraries installed outside the toolkit path
  --extract=<path>          extract the driver runfile and the toolkit files to <path>
  --override                skip the compiler and toolkit detection checks
  --no-opengl-libs          driver: no OpenGL libraries
  --no-man-page             do not install man pages under /usr/share/man
  --no-drm                  driver: no nvidia-drm kernel module
  --kernel-source-path=<path>  driver: kernel sources to build the module against
  --run-nvidia-xconfig      driver: run nvidia-xconfig
  --tmpdir=<path>           temporary files in <path> instead of /tmp
  --help                    print this list
USAGE
}

silent=no driver=no toolkit=no samples=no override=no manpages=yes
toolkitpath= samplespath= installpath= defaultroot= extract= tmpdir=/tmp driver_flags= settings=
for arg in "$@"; do
    case "$arg" in
        --silent) silent=yes ;;
        --driver) driver=yes ;;
        --toolkit) toolkit=yes ;;
        --samples) samples=yes ;;
        --toolkitpath=/*) toolkitpath=${arg#*=} ;;
        --samplespath=/*) samplespath=${arg#*=} ;;
        --installpath=/*) installpath=${arg#*=} ;;
        --defaultroot=/* | --librarypath=/*) defaultroot=${arg#*=} ;;
        --extract=/*) extract=${arg#*=} ;;
        --tmpdir=/*) tmpdir=${arg#*=} ;;
        --kernel-source-path=/*) driver_flags="$driver_flags --kernel-source-path=${arg#*=}" ;;
        --run-nvidia-xconfig) driver_flags="$driver_flags --run-nvidia-xconfig" ;;
        --no-opengl-libs) driver_flags="$driver_flags --no-opengl-files" ;;
        --no-drm) driver_flags="$driver_flags --no-drm" ;;
        --no-man-page) manpages=no ;;
        --override) override=yes ;;
        --help) usage; exit 0 ;;
        *)
            printf 'Unknown option: %s\nRun with --help for the list of options.\n' "$arg" >&2
            exit 1
            ;;
    esac
    case "$arg" in
        *=*) settings="$settings ${arg#--}" ;;
        *) settings="$settings ${arg#--}=true" ;;
    esac
done

# The installer logs to /var/log as root and to /tmp otherwise.
if [ "$(id -u)" = 0 ]; then LOG_PATH=/var/log/cuda-installer.log; else LOG_PATH=/tmp/cuda-installer.log; fi
LOG="$R$LOG_PATH"
mkdir -p "${LOG%/*}" 2>/dev/null
log() { printf '[INFO]: %s\n' "$*" >>"$LOG"; }
fail() {
    printf '[ERROR]: %s\n' "$*" >>"$LOG"
    printf ' Installation failed. See log at %s for details.\n' "$LOG_PATH"
    exit 1
}
for setting in $settings; do log "Setting $setting"; done

payload() { tail -n +@PAYLOAD_LINE@ "$SELF" | base64 -d | tar -xzf - -C "$1"; }

if [ -n "$extract" ]; then
    mkdir -p "$R$extract" && payload "$R$extract" || fail "Extraction to $extract failed"
    printf 'gpufleet stand-in for NVIDIA-Linux-x86_64-%s.run\n' "$DRIVER_VERSION" \
        >"$R$extract/NVIDIA-Linux-x86_64-$DRIVER_VERSION.run"
    exit 0
fi

# Without --silent the installer opens its ncurses menu on the terminal.
if [ "$silent" != yes ]; then
    if [ ! -t 0 ]; then
        printf 'Error opening terminal: %s.\n' "${TERM:-unknown}" >&2
        exit 1
    fi
    echo "gpufleet stand-in: the interactive menu is not emulated; run with --silent" >&2
    exit 1
fi

if [ "$driver$toolkit$samples" = nonono ]; then
    if [ "$(id -u)" != 0 ]; then
        fail "At least one of --driver, --toolkit and --samples is required without root permissions"
    fi
    driver=yes toolkit=yes samples=yes # root: the menu's default selection, driver included
fi
[ -n "$installpath" ] && : "${toolkitpath:=$installpath}" "${samplespath:=$installpath}"
: "${toolkitpath:=/usr/local/cuda-$CUDA_SERIES}" "${samplespath:=${HOME:-/root}}"

if [ -e "$R/usr/lib/x86_64-linux-gnu/libcuda.so.$DRIVER_VERSION" ]; then
    log "Driver $DRIVER_VERSION installed."
else
    log "Driver not installed."
fi
log "Checking compiler version..."
if gcc_path=$(command -v gcc); then
    log "gcc location: $gcc_path"
    log "gcc version: $(gcc -v 2>&1 | tail -n 1)"
elif [ "$override" = yes ]; then
    log "Missing gcc, ignored (--override)."
else
    printf '[ERROR]: Missing gcc. gcc is required to continue.\n' >>"$LOG"
    printf ' Failed to verify gcc version. See log at %s for details.\n' "$LOG_PATH"
    exit 1
fi
log "Initializing menu"
log "Setup complete"
log "Components to install:"
[ "$driver" = yes ] && log "Driver" && log "$DRIVER_VERSION"
[ "$toolkit" = yes ] && log "CUDA Toolkit $CUDA_SERIES"
[ "$samples" = yes ] && log "CUDA Samples $CUDA_SERIES"

mkdir -p "$R$tmpdir" && WORK=$(mktemp -d "$R$tmpdir/cuda-installer.XXXXXX") || fail "No temporary directory in $tmpdir"
payload "$WORK" || fail "Extraction of the installer payload failed"

if [ "$driver" = yes ]; then
    run="NVIDIA-Linux-x86_64-$DRIVER_VERSION.run --ui=none --no-questions --accept-license"
    log "Executing $run --disable-nouveau --no-cc-version-check --install-libglvnd$driver_flags 2>&1"
    libdir="$R${defaultroot:-/usr/lib/x86_64-linux-gnu}"
    mkdir -p "$libdir" && printf 'gpufleet stand-in: driver %s installed by %s\n' \
        "$DRIVER_VERSION" "$SELF" >"$libdir/libcuda.so.$DRIVER_VERSION" || fail "Install of driver component failed."
    date -u '+%Y-%m-%dT%H:%M:%SZ' >"$STANDIN_LOG_DIR/runfile-driver-installed"
    log "Finished with code: 0"
fi

if [ "$toolkit" = yes ]; then
    T="$R$toolkitpath"
    log "Installing CUDA Toolkit $CUDA_SERIES to $toolkitpath"
    # nvcc and version.json first: an interrupted install leaves them without the libraries.
    mkdir -p "$T/bin" && cp "$WORK/cuda_nvcc/bin/nvcc" "$T/bin/nvcc" &&
        cp "$WORK/version.json" "$T/version.json" || fail "Install of CUDA Toolkit $CUDA_SERIES failed"
    if [ -f "$R/etc/gpufleet-standin/runfile-pause" ]; then
        sleep "$(cat "$R/etc/gpufleet-standin/runfile-pause")"
    fi
    cp -RP "$WORK/cuda_cudart/targets" "$T/" &&
        ln -sfn targets/x86_64-linux/lib "$T/lib64" &&
        ln -sfn targets/x86_64-linux/include "$T/include" &&
        cp "$WORK/bin/cuda-uninstaller" "$T/bin/cuda-uninstaller" &&
        mkdir -p "$R/usr/local" && ln -sfn "$toolkitpath" "$R/usr/local/cuda" ||
        fail "Install of CUDA Toolkit $CUDA_SERIES failed"
    if [ "$manpages" = yes ]; then
        mkdir -p "$R/usr/share/man/man7" &&
            cp "$WORK/cuda_documentation/man/man7/libcudart.7" "$R/usr/share/man/man7/" ||
            fail "Install of the CUDA man pages failed"
    fi
fi

if [ "$samples" = yes ]; then
    S="$R$samplespath/NVIDIA_CUDA-${CUDA_SERIES}_Samples"
    mkdir -p "$S" && printf '# gpufleet stand-in: CUDA %s Samples\n' "$CUDA_SERIES" >"$S/Makefile" ||
        fail "Install of CUDA Samples $CUDA_SERIES failed"
fi

rm -rf "$WORK"
log "Installation complete"
exit 0
