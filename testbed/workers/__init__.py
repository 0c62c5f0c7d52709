"""Several machines for one swarm: the workers, their inventory, and Ansible driving them.

- `inventory`: the workers, read from an inventory in Ansible's own format (by Ansible,
  through ansible-runner), checked before anything is started;
- `ansible`: playbooks run through ansible-runner, its events turned into the testbed's
  progress, a failure named by worker and task;
- `harness`: workers on this one machine, each a network namespace with its own sshd on an
  underlay bridge, for tests and for trying the multi-machine path without a second machine.

Every address a worker uses on the underlay is in WORKER_UNDERLAY, 198.19.252.0/22: the last
control-network block, which runs never take.
"""
