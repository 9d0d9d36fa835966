# Shared by scripts/demo, scripts/test and .ci/run: install what a fresh machine lacks.
# Sourced, not run.

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

apt_updated=0
# ensure_packages CMD:PACKAGE ... installs PACKAGE (Debian) when CMD is missing.
ensure_packages() {
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing: ${missing[*]}; run as root or install them with apt-get"
        return 1
    fi
    if [ $apt_updated -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Rust toolchain comes with the machine (rustup); Debian's cargo is too old for edition 2024.
ensure_toolchain() {
    if [ -d "$HOME/.cargo/bin" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo not found: install Rust >= 1.90 (rustup) and re-run"
        return 1
    fi
    ensure_packages cc:gcc
}
