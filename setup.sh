#!/usr/bin/env bash
# swarm testbed set-up, for a fresh Debian 12+ / Ubuntu 24.04+ machine (Python 3.11+). Idempotent.
#
#   sudo ./setup.sh        install what is missing, build the images, run
#                          experiments/quickstart.yaml and print its report
#   sudo ./setup.sh test   install what is missing, build the images, run the test suite
#                          (extra arguments go to pytest)
#   sudo ./setup.sh worker install what is missing, no images: a worker of several machines
#                          (`testbed workers prepare` runs it there; its images come from
#                          the coordinator)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi

mode=${1:-quickstart}
[ $# -gt 0 ] && shift

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# 1. Debian packages: container engine, Mininet (and mnexec), bridges, image builder;
#    libnetfilter-queue-dev, gcc and python3-dev build the delay element's NFQUEUE binding;
#    iperf3 and ping are what `testbed calibrate` measures with; chromium is the headless
#    browser the tests open HTML reports in (tests/browser.py, through Playwright); tcpdump
#    takes the packet captures an experiment asks for (capture:); openssh-server is the sshd
#    of the test workers (testbed.workers.harness: namespaces the testbed makes and starts
#    it in) and openssh-client how Ansible reaches workers.
APT_PACKAGES="docker.io mininet bridge-utils mmdebstrap debian-archive-keyring iproute2 net-tools
  ethtool iptables python3-venv python3-pip git ca-certificates procps gpg
  libnetfilter-queue-dev gcc python3-dev iperf3 iputils-ping tcpdump openssh-server openssh-client"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
  apt-get update -qq
  # no package may start a service of its own here (openssh-server would start an sshd on
  # the machine): Debian's policy-rc.d says no while the install runs, unless one exists
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT     # ours: gone however the install ends
  fi
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  # nor start one at the next boot: the testbed starts its own sshd where it needs one
  case " $missing " in *" openssh-server "*)
    [ -d /run/systemd/system ] && systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true ;;
  esac
fi
#    Debian ships chromium as a package; Ubuntu only as a snap. Where apt has no chromium,
#    everything but the test that opens report.html in a browser works: say so, go on.
#    (A worker has no use for it.)
if [ "$mode" != worker ] && ! dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed"; then
  { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; } ||
    echo "setup.sh: apt has no chromium here; the HTML report's browser test will fail (reports still work)" >&2
fi

# 2. A Docker daemon. Where systemd runs it, ask systemd; otherwise start dockerd detached.
if ! docker info >/dev/null 2>&1; then
  say "starting the Docker daemon"
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then :; else
    mkdir -p /var/log/testbed
    setsid dockerd >>/var/log/testbed/dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/testbed/dockerd.log" >&2; exit 1; }
fi

# 3. dockerd turns on bridge netfilter with FORWARD policy DROP, which silently breaks
#    bridges that are not Docker's: let bridged frames bypass iptables.
for k in net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables net.bridge.bridge-nf-call-arptables; do
  [ -e "/proc/sys/${k//.//}" ] && sysctl -qw "$k=0"
done
#    Each namespace made from now on gets its own small TCP socket table (Linux >= 6.1):
#    the sampler lists each peer's sockets every second, and a listing otherwise walks the
#    machine's whole table (0.2 ms each, even when the namespace has no socket).
[ -e /proc/sys/net/ipv4/tcp_child_ehash_entries ] && sysctl -qw net.ipv4.tcp_child_ehash_entries=1024

# 4. The Python environment: Debian's python3 with its site-packages, where Mininet lives.
/usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup.sh: the testbed needs Python 3.11 or later; this system's python3 is" \
       "$(/usr/bin/python3 -V 2>&1 | cut -d' ' -f2) (Debian 12+ and Ubuntu 24.04+ have one)" >&2; exit 2; }
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-12)
if [ ! -e "$stamp" ]; then
  say "creating the virtual environment in .venv"
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  rm -f .venv/.installed-*; touch "$stamp"
fi

if [ "$mode" = worker ]; then
  say "ready: $(.venv/bin/testbed --version 2>&1)"
  exit 0
fi

# 5. Container images (skipped when up to date).
.venv/bin/testbed images build

case "$mode" in
  quickstart)
    say "running experiments/quickstart.yaml"
    exec .venv/bin/testbed run experiments/quickstart.yaml ;;
  test)
    say "running the test suite"
    exec .venv/bin/python -m pytest "$@" ;;
  *) echo "usage: $0 [test [pytest args] | worker]" >&2; exit 2 ;;
esac
