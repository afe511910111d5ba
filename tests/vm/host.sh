# Host-side set-up shared by tests/vm/run and tests/vm/two-guests (sourced):
# virtme-ng and QEMU present, the kernel to boot in $KVER, the binaries
# built (unless BUILD=0) and found in $BIN. Expects ROOT, VENV, BUILD, die.
[ -x "$VENV/bin/vng" ] || die "virtme-ng not found in $VENV: run scripts/setup first"
export PATH="$VENV/bin:$PATH"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found: run scripts/setup first"

# The newest installed kernel that has TCMU: the guest uses the host's
# /lib/modules, so the image and its modules must both be here.
KVER=""
for v in $(ls /lib/modules 2>/dev/null | sort -V -r); do
  if [ -f "/boot/vmlinuz-$v" ] && find "/lib/modules/$v/kernel/drivers/target" -name 'target_core_user.ko*' 2>/dev/null | grep -q .; then
    KVER="$v"; break
  fi
done
[ -n "$KVER" ] || die "no installed kernel with target_core_user (apt-get install linux-image-amd64, or run scripts/setup)"
[ -r "/boot/vmlinuz-$KVER" ] || die "/boot/vmlinuz-$KVER is not readable"

if [ "$BUILD" -eq 1 ]; then
  echo "vm: building release binaries" >&2
  (cd "$ROOT" && cargo build --release --workspace --bins -q) || die "cargo build failed"
fi
# Binaries come from cargo's target directory: CARGO_TARGET_DIR when set (a
# worktree with its own target dir), else this checkout's target/.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release"
[ -x "$BIN/tcmu-prd" ] || die "$BIN/tcmu-prd missing (drop --no-build)"

