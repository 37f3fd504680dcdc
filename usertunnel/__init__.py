"""usertunnel: GRE (RFC 2784/2890), IPIP (RFC 2003), SIT (RFC 4213) and IPv6 (RFC 2473, RFC 7676) tunnels in
userspace, over a Linux TUN device."""

__version__ = "0.1.0"
