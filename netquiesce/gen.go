package netquiesce

// The eBPF objects are generated and committed, so building needs no clang.
// Regenerate with `go generate ./netquiesce/...` (clang, llvm-strip,
// libbpf-dev and linux-libc-dev installed); the output is byte-for-byte
// reproducible.
//go:generate go tool bpf2go -go-package netquiesce -target bpfel -type counter quiesce bpf/quiesce.c -- -O2 -Wall -Werror -I/usr/include/x86_64-linux-gnu
