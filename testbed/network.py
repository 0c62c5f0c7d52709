"""The emulated network: Mininet, extended (not forked) so that hosts are containers.

DockerHost is a mininet.node.Host whose shell joins an existing container's network and
mount namespaces with `mnexec -a PID` (Containernet's idea, done by subclassing), so
Mininet moves veths into the container and configures them as it does for any host.
ShapedIntf applies a LinkShaper's tc commands to the egress of its interface; an access
link shapes upload on the host's end and download on the switch's end.
"""
from __future__ import annotations

from mininet.link import Intf, Link
from mininet.net import Mininet
from mininet.node import Host, OVSBridge
from mininet.nodelib import LinuxBridge

from testbed.errors import RunError
from testbed.plan import Plan, Shaping
from testbed.shaping import LinkShaper


class DockerHost(Host):
    """A Mininet host living in a running container's namespaces."""

    def __init__(self, name: str, container_pid: int, **params):
        self.container_pid = container_pid
        super().__init__(name, **params)

    def startShell(self, mnopts=None):
        # Node.startShell appends mnexec's 'n' (make new namespaces) when inNamespace is
        # set; this host's namespaces already exist, so attach to them with -a instead.
        self.inNamespace = False
        try:
            super().startShell(mnopts=f"-cda {self.container_pid}")
        finally:
            self.inNamespace = True

    def _popen(self, cmd, **params):
        # mnexec -a enters the container's mount namespace and then changes into the
        # caller's working directory, which does not exist there: start from /.
        params.setdefault("cwd", "/")
        return super()._popen(cmd, **params)


class ShapedIntf(Intf):
    """An interface whose egress is shaped by a LinkShaper."""

    def config(self, shaping: Shaping | None = None, shaper: LinkShaper | None = None, **params):
        result = super().config(**params)
        if shaping is not None and shaper is not None:
            # Shaping is only exact without segmentation offload: otherwise the qdisc sees
            # 64 KiB super-packets and a queue of N packets is not N wire packets.
            self.cmd(f"ethtool -K {self.name} tso off gso off gro off")
            for line in shaper.commands(self.name, shaping):
                # Judged by exit status, not by output: with other runs adding links at the
                # same time, tc may warn "Dump was interrupted and may be inconsistent" on
                # success (seen with three runs in parallel).
                out, _, rc = self.cmd(f"{line}; echo tb-rc=$?").strip().rpartition("tb-rc=")
                if rc.strip() != "0":
                    raise RunError(f"shaping {self.node.name}:{self.name} failed: `{line}`: {out.strip()}")
        return result


# Switch kinds, keyed by the topology's `switch:` value. Both need no OpenFlow controller:
# LinuxBridge learns like any bridge; OVSBridge runs Open vSwitch in standalone mode.
SWITCHES = {"linuxbridge": LinuxBridge, "ovs": OVSBridge}


def build(plan: Plan, pids: dict[str, int], shaper: LinkShaper) -> Mininet:
    """Create bridges, veths and shaping for the plan; hosts are the given containers."""
    net = Mininet(topo=None, build=False, controller=None, switch=SWITCHES[plan.experiment.topology.switch],
                  host=DockerHost,
                  link=Link, intf=ShapedIntf, autoSetMacs=False, autoStaticArp=False, waitConnected=False)
    nodes = {}
    for i, sw in enumerate(plan.switches, 1):
        nodes[sw.name] = net.addSwitch(sw.device, dpid=f"{i:016x}")
    for h in plan.hosts:
        nodes[h.name] = net.addHost(h.name, cls=DockerHost, container_pid=pids[h.name],
                                    ip=f"{h.data_ip}/{plan.data_prefix}")
    for link in plan.links:
        net.addLink(nodes[link.node1], nodes[link.node2], intfName1=link.intf1, intfName2=link.intf2,
                    params1={"shaping": link.egress1, "shaper": shaper},
                    params2={"shaping": link.egress2, "shaper": shaper})
    net.build()
    net.start()
    for h in plan.hosts:
        node = nodes[h.name]
        node.intf("ctl0").setIP(h.ctl_ip, plan.control_prefix)
    ctl = nodes["control"]
    err = ctl.cmd(f"ip addr add {plan.control_gateway}/{plan.control_prefix} dev {ctl.name}")
    if err.strip():
        raise RunError(f"control network address on {ctl.name}: {err.strip()}")
    return net
