#!/usr/bin/python3
"""Run a command under the kernel side of the units' sandbox, without systemd.

The packaged units set MemoryDenyWriteExecute=, SystemCallFilter=@system-service,
RestrictAddressFamilies=, NoNewPrivileges= and LockPersonality=. Whether
llama.cpp (and the hub, and the agent) still work under them is a question about
the kernel, not about systemd, so this applies the same restrictions to itself
and then execs the command:

  - MemoryDenyWriteExecute: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), the
    kernel's own W^X switch (Linux 6.3+; systemd 256+ uses it too, older
    systemd installs an equivalent seccomp filter on mmap/mprotect).
  - SystemCallFilter=@system-service ~@privileged: a seccomp allowlist expanded
    from `systemd-analyze syscall-filter` on this machine, every
    other call killing the process (systemd's default without
    SystemCallErrorNumber=), so a forbidden call cannot pass unnoticed.
  - RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX: socket() with any other
    family fails with EAFNOSUPPORT, as systemd does it.
  - NoNewPrivileges: prctl(PR_SET_NO_NEW_PRIVS), which seccomp needs anyway.
  - LockPersonality: personality() allowed only with its current value.

Usage: sandbox-run.py [--no-mdwe] [--no-seccomp] -- COMMAND [ARGS...]
Needs python3-seccomp (the libseccomp bindings) and systemd-analyze.
"""

import ctypes
import errno
import os
import re
import subprocess
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def prctl(option, arg2=0):
    if libc.prctl(option, arg2, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def syscall_groups():
    """Every group `systemd-analyze syscall-filter` knows, name -> members."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], check=True, capture_output=True, text=True
    ).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(name, groups, seen=None):
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    calls = set()
    for member in groups[name]:
        if member.startswith("@"):
            calls |= expand(member, groups, seen)
        else:
            calls.add(member)
    return calls


def install_seccomp():
    import seccomp  # python3-seccomp

    groups = syscall_groups()
    # SystemCallFilter=@system-service then SystemCallFilter=~@privileged
    allowed = expand("@system-service", groups) - expand("@privileged", groups)
    f = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    known = 0
    for call in sorted(allowed):
        if call in ("socket", "personality"):
            continue
        try:
            f.add_rule(seccomp.ALLOW, call)
            known += 1
        except (RuntimeError, ValueError, OSError):
            pass  # a call this architecture does not have (e.g. *_time64 on x86-64)
    # RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
    for family in (1, 2, 10):  # AF_UNIX, AF_INET, AF_INET6
        f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
    for family in set(range(0, 46)) - {1, 2, 10}:
        f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
    # LockPersonality: only the current personality (0 = PER_LINUX) or a query.
    f.add_rule(seccomp.ALLOW, "personality", seccomp.Arg(0, seccomp.EQ, 0))
    f.add_rule(seccomp.ALLOW, "personality", seccomp.Arg(0, seccomp.EQ, 0xFFFFFFFF))
    f.load()
    return known


def main(argv):
    mdwe, filt = True, True
    while argv and argv[0] != "--":
        flag = argv.pop(0)
        if flag == "--no-mdwe":
            mdwe = False
        elif flag == "--no-seccomp":
            filt = False
        else:
            sys.exit(f"sandbox-run.py: unknown flag {flag}; see the usage at the top of the file")
    if not argv or len(argv) < 2:
        sys.exit("usage: sandbox-run.py [--no-mdwe] [--no-seccomp] -- COMMAND [ARGS...]")
    command = argv[1:]
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    applied = ["NoNewPrivileges"]
    if mdwe:
        prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)
        if libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) & PR_MDWE_REFUSE_EXEC_GAIN == 0:
            sys.exit("sandbox-run.py: PR_SET_MDWE did not stick")
        applied.append("MemoryDenyWriteExecute")
    if filt:
        n = install_seccomp()
        applied.append(f"SystemCallFilter=@system-service ~@privileged ({n} calls)")
        applied.append("RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX")
        applied.append("LockPersonality")
    print("sandbox-run.py: " + ", ".join(applied), file=sys.stderr, flush=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
