# Sourced by the project's scripts: a PATH with cargo (rustup installs it
# under ~/.cargo/bin, which a non-login shell may not have) and virtme-ng.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH="$HOME/.cargo/bin:$PATH"
fi
PATH="${TCMU_PRD_VENV:-/opt/tcmu-prd-venv}/bin:$PATH"
export PATH
