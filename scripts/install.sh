#!/usr/bin/env bash
# Install hoosh-edge from this checkout as a systemd service on Debian / Raspberry Pi OS
# (arm64, x86_64). Run as root; safe to run again (it upgrades the code, keeps config and data).
#
#   sudo scripts/install.sh                     install (or upgrade) and start the service
#   sudo scripts/install.sh --pyz FILE          the same from one hoosh-edge.pyz (scripts/build-pyz)
#   sudo scripts/install.sh --uninstall         remove the service, venv and user; keep config + data
#   sudo scripts/install.sh --uninstall --purge also remove /etc/hoosh-edge and /var/lib/hoosh-edge
#
# Options:
#   --root DIR   install under DIR (every path prefixed; no apt, user, chown or systemctl): for
#                tests and staging. The venv is made for DIR/opt/... and cannot be moved.
#   --dry-run    print the steps, change nothing
#   --no-models  do not pull the default models
#   --no-apt     do not apt-get install the build prerequisites (only warn when missing)
#   --pyz FILE   install FILE (a hoosh-edge.pyz built for this machine's Python) instead of a venv:
#                no compiler, no pip, nothing to build
#   --uninstall, --purge   see above
# Environment: PYTHON (default python3) creates the venv, or runs the single file.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
SERVICE_USER="hoosh-edge"
DEFAULT_MODELS=(smollm2 whisper-tiny.en joe)
# libespeak-ng1 + espeak-ng-data: Piper's phonemes where no piper-phonemize wheel exists (3.12+).
APT_PACKAGES=(python3-venv python3-dev build-essential cmake libespeak-ng1 espeak-ng-data)

# The paths the installed system uses (written into the config and the unit as they are).
OPT_DIR=/opt/hoosh-edge
ETC_DIR=/etc/hoosh-edge
STATE_DIR=/var/lib/hoosh-edge
MODELS_DIR="$STATE_DIR/models"
# Where the single file's packages are unpacked, by this script as root: read-only to the service,
# like a venv (the unit's HOOSH_EDGE_CACHE).
CACHE_DIR=/opt/hoosh-edge/cache
UNIT_PATH=/etc/systemd/system/hoosh-edge.service

ROOT="/"
DRY_RUN=0
NO_MODELS=0
NO_APT=0
UNINSTALL=0
PURGE=0
PYZ=""

usage() {
    sed -n '2,19s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="$2"; shift ;;
        --root=*) ROOT="${1#--root=}" ;;
        --dry-run) DRY_RUN=1 ;;
        --no-models) NO_MODELS=1 ;;
        --no-apt) NO_APT=1 ;;
        --pyz) [ $# -ge 2 ] || die "--pyz needs a file"; PYZ="$2"; shift ;;
        --pyz=*) PYZ="${1#--pyz=}" ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"
[ -n "$ROOT" ] || die "--root needs a directory"
if [ -n "$PYZ" ]; then
    [ "$UNINSTALL" = 0 ] || die "--pyz does not go with --uninstall"
    [ -f "$PYZ" ] || die "--pyz: no file $PYZ"
    PYZ="$(cd "$(dirname "$PYZ")" && pwd)/$(basename "$PYZ")"
fi

# SYSTEM=1: the real machine. Anything else is a tree under ROOT where users, ownership, apt and
# systemd do not apply.
if [ "$ROOT" = "/" ]; then
    SYSTEM=1
    PREFIX=""
else
    SYSTEM=0
    if [ "$DRY_RUN" = 0 ]; then
        mkdir -p -- "$ROOT" || die "cannot create $ROOT"
    fi
    if [ -d "$ROOT" ]; then
        # Physical path: Python reports its own location without symlinks, and we compare to it.
        PREFIX="$(cd "$ROOT" && pwd -P)"
    else
        PREFIX="$ROOT"  # dry run into a directory that does not exist yet
    fi
fi
OPT="$PREFIX$OPT_DIR"
VENV="$OPT/venv"
BIN="$OPT/bin/hoosh-edge"  # the unit's ExecStart: the venv's console script or the file's launcher
PYZ_DEST="$OPT/hoosh-edge.pyz"
CACHE="$PREFIX$CACHE_DIR"
ETC="$PREFIX$ETC_DIR"
STATE="$PREFIX$STATE_DIR"
MODELS="$PREFIX$MODELS_DIR"
UNIT="$PREFIX$UNIT_PATH"

step() {
    echo "==> $*"
}

note() {
    echo "    $*"
}

# Run a command, or only show it on a dry run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '    +'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

systemd_running() {
    [ "$SYSTEM" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null
}

check_root() {
    if [ "$SYSTEM" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
        die "run as root (sudo $0), or use --root DIR to install into a directory"
    fi
}

# ---- install ---------------------------------------------------------------------------------

check_platform() {
    step "checking the platform"
    local arch
    arch="$(uname -m)"
    case "$arch" in
        aarch64 | arm64 | x86_64) note "architecture $arch" ;;
        *) note "warning: $arch is untested (arm64 and x86_64 are); carrying on" ;;
    esac
    if ! command -v "$PYTHON" >/dev/null; then
        die "$PYTHON not found; install Python 3.10 or newer (apt-get install python3)"
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        die "hoosh-edge needs Python 3.10 or newer; $PYTHON is $("$PYTHON" --version 2>&1)"
    fi
    note "$("$PYTHON" --version 2>&1) ($(command -v "$PYTHON"))"
    if [ -n "$PYZ" ]; then
        # The file checks the Python before it unpacks anything; --built-for stops right there.
        local built_for
        built_for="$("$PYTHON" "$PYZ" --built-for 2>&1)" \
            || die "$PYZ cannot run on $PYTHON: $built_for"
        note "$(basename "$PYZ"): $built_for"
    fi
}

missing_apt_packages() {
    local pkg
    command -v dpkg-query >/dev/null || return 0
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            echo "$pkg"
        fi
    done
}

install_apt_packages() {
    local missing
    mapfile -t missing < <(missing_apt_packages)
    step "build prerequisites (${APT_PACKAGES[*]})"
    if [ "${#missing[@]}" = 0 ]; then
        note "all installed"
        return
    fi
    if [ "$SYSTEM" = 0 ] || [ "$NO_APT" = 1 ]; then
        # A cached llama-cpp-python wheel needs no compiler, so this is a warning, not an error.
        note "not installing (${missing[*]}): --no-apt or --root; the venv or the llama.cpp build may fail without them"
        return
    fi
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

create_user() {
    step "service user $SERVICE_USER"
    if [ "$SYSTEM" = 0 ]; then
        note "skipped under --root"
    elif getent passwd "$SERVICE_USER" >/dev/null; then
        note "exists"
    else
        # A system account with no home and no login shell: it only runs the service.
        run useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "hoosh-edge gateway" "$SERVICE_USER"
    fi
}

install_pyz() {
    step "single file $PYZ_DEST from $PYZ"
    run mkdir -p "$OPT/bin"
    run install -m 0644 "$PYZ" "$PYZ_DEST"
    local python
    python="$(command -v "$PYTHON")"
    note "launcher $BIN: $python $PYZ_DEST (packages in $CACHE)"
    if [ "$DRY_RUN" = 0 ]; then
        local tmp
        tmp="$(mktemp "$OPT/bin/.hoosh-edge.XXXXXX")"
        # The CLI as the venv's console script would be, on the packages unpacked below (the
        # service user has no home, and cannot write here).
        cat >"$tmp" <<EOF
#!/bin/sh
# Installed by scripts/install.sh --pyz: the single file, run by the Python it was built for.
: "\${HOOSH_EDGE_CACHE:=$CACHE}"
export HOOSH_EDGE_CACHE
exec $(printf '%q' "$python") $(printf '%q' "$PYZ_DEST") "\$@"
EOF
        chmod 0755 "$tmp"
        mv -f -- "$tmp" "$BIN"
    fi
    # Unpack now, as root, with every module compiled: the service only reads (ProtectSystem=strict
    # keeps /opt read-only to it), and cannot change the code it runs.
    step "unpacking $(basename "$PYZ") into $CACHE"
    run mkdir -p "$CACHE"
    run chmod 0755 "$CACHE"
    PYZ_BUILD=""
    if [ "$DRY_RUN" = 0 ]; then
        local out
        out="$(env -u HOOSH_EDGE_CONFIG HOOSH_EDGE_CACHE="$CACHE" SHIV_COMPILE_PYC=1 "$BIN" --help)" \
            || die "the installed file does not run: $BIN --help failed"
        PYZ_BUILD="$(printf '%s\n' "$out" | sed -n 's|^Its packages are unpacked in \(.*\)/site-packages\.$|\1|p')"
        [ -d "$PYZ_BUILD" ] || die "the installed file did not say where it unpacked ($out)"
        note "$PYZ_BUILD"
    fi
    if [ -e "$VENV" ]; then
        note "removing the venv of an earlier install ($VENV): the file replaces it"
        run rm -rf -- "${VENV:?}"
    fi
    run mkdir -p "$OPT/docs"
    run install -m 0644 "$SRC/docs/operating.md" "$OPT/docs/operating.md"
}

install_venv() {
    step "venv $VENV with hoosh-edge[local] from $SRC"
    if [ -x "$VENV/bin/python" ]; then
        note "venv exists; upgrading hoosh-edge in it"
    else
        run mkdir -p "$OPT"
        run "$PYTHON" -m venv "$VENV"
    fi
    run "$VENV/bin/python" -m pip install --quiet --upgrade pip || note "could not upgrade pip; carrying on"
    # Build from a clean copy of the checkout: pip builds in-tree, and as root it would leave
    # root-owned build/ and *.egg-info in the operator's checkout.
    local build=""
    if [ "$DRY_RUN" = 0 ]; then
        build="$(mktemp -d)"
        # shellcheck disable=SC2064 # expand now: the variable is local
        trap "rm -rf -- '$build'" EXIT
        tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=./models --exclude=./data \
            --exclude=./build --exclude='*.egg-info' --exclude=__pycache__ \
            --exclude=.pytest_cache --exclude=.ruff_cache -cf - . | tar -C "$build" -xf -
    fi
    # llama-cpp-python from the wheel scripts/setup builds (portable on x86_64: see that script),
    # built here first if this machine has none yet (minutes on a Pi).
    if [ "$DRY_RUN" = 0 ]; then
        local wheel key
        wheel="$("$SRC/scripts/llama-wheel" "$VENV/bin/python")"
        key="$(basename "$(dirname "$wheel")")"
        if [ "$(cat "$VENV/.llama-cpp-build" 2>/dev/null)" != "$key" ]; then
            run "$VENV/bin/python" -m pip install --quiet --no-deps --force-reinstall "$wheel"
            echo "$key" > "$VENV/.llama-cpp-build"
        fi
    else
        note "would install llama-cpp-python from the wheel of scripts/llama-wheel (built once)"
    fi
    run "$VENV/bin/python" -m pip install --quiet "${build:-$SRC}[local]"
    # Same version number, new code: reinstall the project itself (not its dependencies).
    run "$VENV/bin/python" -m pip install --quiet --force-reinstall --no-deps "${build:-$SRC}"
    if [ -n "$build" ]; then
        rm -rf -- "$build"
        trap - EXIT
    fi
    install_manifest
    run mkdir -p "$OPT/bin"
    run ln -sfn ../venv/bin/hoosh-edge "$BIN"
    if [ -e "$PYZ_DEST" ] || [ -e "$CACHE" ]; then
        note "removing the single file of an earlier install ($PYZ_DEST): the venv replaces it"
        run rm -rf -- "$PYZ_DEST" "${CACHE:?}"
    fi
    run mkdir -p "$OPT/docs"
    run install -m 0644 "$SRC/docs/operating.md" "$OPT/docs/operating.md"
}

install_manifest() {
    # The model manifest (which file is "smollm2", where to pull it from) lives in the checkout's
    # models/, and the package looks for it beside its own directory: in a venv that is
    # site-packages/models/. Put a copy there, unless the package ships its own.
    local want
    if [ "$DRY_RUN" = 1 ] && [ ! -x "$VENV/bin/python" ]; then
        note "model manifest: copied beside the installed package unless it ships one"
        return
    fi
    want="$("$VENV/bin/python" -I -c 'from hoosh_edge.backends.modelstore import DEFAULT_MANIFEST; print(DEFAULT_MANIFEST)')"
    case "$want" in
        */hoosh_edge/*) [ -f "$want" ] && return ;;  # shipped inside the package
    esac
    case "$want" in
        "$VENV"/*) ;;
        *) note "warning: the package wants its model manifest at $want, outside the venv; not copying"
           return ;;
    esac
    run mkdir -p "$(dirname "$want")"
    run install -m 0644 "$SRC/models/manifest.toml" "$want"
}

write_config() {
    step "config $ETC/config.toml"
    run mkdir -p "$ETC"
    run chmod 0755 "$ETC"
    if [ -e "$ETC/config.toml" ]; then
        note "exists; left as it is (compare with $SRC/hoosh-edge.example.toml after upgrades)"
    else
        note "from hoosh-edge.example.toml with data_dir = \"$STATE_DIR\", models_dir = \"$MODELS_DIR\""
        if [ "$DRY_RUN" = 0 ]; then
            local tmp
            tmp="$(mktemp "$ETC/.config.toml.XXXXXX")"
            {
                echo "# Installed by scripts/install.sh; the hoosh-edge service reads this file."
                echo "# After editing: sudo systemctl restart hoosh-edge"
                echo "# Cloud API keys go in $ETC_DIR/env (mode 0600), not here."
                echo
                sed -e "s|^data_dir = \"[^\"]*\"|data_dir = \"$STATE_DIR\"|" \
                    -e "s|^models_dir = \"[^\"]*\"|models_dir = \"$MODELS_DIR\"|" \
                    "$SRC/hoosh-edge.example.toml"
            } >"$tmp"
            if ! grep -q "^data_dir = \"$STATE_DIR\"" "$tmp" \
                || ! grep -q "^models_dir = \"$MODELS_DIR\"" "$tmp"; then
                rm -f -- "$tmp"
                die "could not set data_dir / models_dir in the example config"
            fi
            chmod 0640 "$tmp"
            # Group-readable by the service only: a config may hold secrets written inline.
            [ "$SYSTEM" = 0 ] || chown "root:$SERVICE_USER" "$tmp"
            mv -- "$tmp" "$ETC/config.toml"
        fi
    fi
    if [ -e "$ETC/env" ]; then
        note "$ETC/env exists; left as it is"
    else
        note "$ETC/env for cloud API keys (mode 0600, read by systemd as root)"
        if [ "$DRY_RUN" = 0 ]; then
            (
                umask 077
                cat >"$ETC/env" <<'EOF'
# Cloud API keys for hoosh-edge, one NAME=value a line (no quotes, no 'export').
# systemd reads this file as root and hands the values to the service; keep it mode 0600.
# After editing: sudo systemctl restart hoosh-edge
#OPENAI_API_KEY=sk-...
#ANTHROPIC_API_KEY=sk-ant-...
#HOOSH_EDGE_KEY=a-long-random-key-for-lan-clients
EOF
            )
        fi
    fi
    run chmod 0600 "$ETC/env"
}

make_state() {
    step "state $STATE (database) and $MODELS (model files)"
    run mkdir -p "$STATE" "$MODELS"
    run chmod 0750 "$STATE"
    if [ "$SYSTEM" = 1 ]; then
        run chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE"
    fi
}

# Piper voices were trained on the espeak-ng data inside piper-phonemize's wheel. A Python that
# has no such wheel (3.12+: pyproject's marker does not even try) speaks through the system's
# libespeak-ng, whose own data gives other phonemes for some words: pull the wheel's data there.
default_models() {
    local models=("${DEFAULT_MODELS[@]}")
    if "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
        models+=(espeak-ng-data)
    fi
    echo "${models[@]}"
}

pull_models() {
    local models
    read -r -a models <<< "$(default_models)"
    step "default models (${models[*]})"
    if [ "$NO_MODELS" = 1 ]; then
        note "skipped (--no-models); later: sudo -u $SERVICE_USER $OPT_DIR/bin/hoosh-edge models pull NAME --models-dir $MODELS_DIR"
        return
    fi
    local model
    for model in "${models[@]}"; do
        if [ "$SYSTEM" = 1 ]; then
            # As the service user, so the files belong to it; from / because root's cwd may be
            # unreadable to it.
            run runuser -u "$SERVICE_USER" -- env -u HOOSH_EDGE_CONFIG -C / \
                "$BIN" models pull "$model" --models-dir "$MODELS"
        else
            run env -u HOOSH_EDGE_CONFIG "$BIN" models pull "$model" --models-dir "$MODELS"
        fi
    done
}

install_unit() {
    step "systemd unit $UNIT"
    run mkdir -p "$(dirname "$UNIT")"
    run install -m 0644 "$SRC/systemd/hoosh-edge.service" "$UNIT"
    if [ "$SYSTEM" = 0 ]; then
        note "not enabled under --root"
    elif ! systemd_running; then
        note "systemd is not running here (a container?): the unit is installed but not enabled or started"
        note "on a booted system: sudo systemctl daemon-reload && sudo systemctl enable --now hoosh-edge"
    else
        run systemctl daemon-reload
        # enable + restart rather than enable --now: a running service must pick up the new code.
        run systemctl enable hoosh-edge.service
        run systemctl restart hoosh-edge.service
    fi
}

prune_old_builds() {
    # Earlier files' packages, now that the service runs the new one (restarted above).
    local d
    [ -n "$PYZ_BUILD" ] || return 0
    for d in "$CACHE"/hoosh-edge.pyz_*; do
        [ -e "$d" ] || continue
        case "$d" in
            "$PYZ_BUILD" | "$PYZ_BUILD".tmp) ;;
            *) note "removing an earlier build's packages: $d"; rm -rf -- "$d" ;;
        esac
    done
    for d in "$CACHE"/.hoosh-edge.pyz_*_lock; do
        [ -e "$d" ] && [ "$d" != "$CACHE/.$(basename "$PYZ_BUILD")_lock" ] && rm -f -- "$d"
    done
    return 0
}

do_install() {
    check_root
    check_platform
    if [ ! -f "$SRC/hoosh-edge.example.toml" ] || [ ! -f "$SRC/systemd/hoosh-edge.service" ]; then
        die "run me from a hoosh-edge checkout ($SRC has no hoosh-edge.example.toml)"
    fi
    if [ -n "$PYZ" ]; then
        step "build prerequisites: none for the single file"
    else
        [ -f "$SRC/pyproject.toml" ] || die "run me from a hoosh-edge checkout ($SRC has no pyproject.toml)"
        install_apt_packages
    fi
    create_user
    if [ -n "$PYZ" ]; then
        install_pyz
    else
        install_venv
    fi
    write_config
    make_state
    pull_models
    install_unit
    [ -z "$PYZ" ] || prune_old_builds
    step "done"
    if [ "$SYSTEM" = 1 ]; then
        note "status:  systemctl status hoosh-edge"
        note "logs:    journalctl -u hoosh-edge -f"
        note "try it:  curl http://127.0.0.1:8088/health"
    else
        note "installed under $PREFIX"
    fi
}

# ---- uninstall -------------------------------------------------------------------------------

do_uninstall() {
    check_root
    step "stopping and removing the service"
    if systemd_running && [ -e "$UNIT" ]; then
        run systemctl disable --now hoosh-edge.service || true
    fi
    if [ -e "$UNIT" ]; then
        run rm -f -- "$UNIT"
    else
        note "no unit at $UNIT"
    fi
    if systemd_running; then
        run systemctl daemon-reload
    fi
    step "removing $OPT (venv, or single file and its packages)"
    if [ -e "$OPT" ]; then
        run rm -rf -- "${OPT:?}"
    else
        note "not there"
    fi
    step "removing user $SERVICE_USER"
    if [ "$SYSTEM" = 0 ]; then
        note "skipped under --root"
    elif getent passwd "$SERVICE_USER" >/dev/null; then
        run userdel "$SERVICE_USER"
    else
        note "not there"
    fi
    if [ "$PURGE" = 1 ]; then
        step "purging config $ETC and data $STATE"
        run rm -rf -- "${ETC:?}" "${STATE:?}"
    else
        step "kept config $ETC and data $STATE (--purge removes them)"
    fi
}

if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: nothing will be changed"
fi
if [ "$UNINSTALL" = 1 ]; then
    do_uninstall
else
    do_install
fi
