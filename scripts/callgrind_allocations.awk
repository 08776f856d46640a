# Used by scripts/instructions_per_request.sh.
# Allocation calls in a callgrind output: call edges into an allocator entry point from code
# outside the allocator (mimalloc's or glibc's), so one allocation is counted once.
function name_of(spec,   id, rest) {
  # "(12) name" defines id 12; "(12)" refers to it.
  if (match(spec, /^\([0-9]+\)/)) {
    id = substr(spec, 2, RLENGTH - 2); rest = substr(spec, RLENGTH + 2)
    if (rest != "") names[id] = rest
    return names[id]
  }
  return spec
}
function allocator(n) { return n ~ /^_?mi_/ || n ~ /^(malloc|calloc|realloc|free|posix_memalign|aligned_alloc)$/ }
/^fn=/ { caller = name_of(substr($0, 4)); next }
/^cfn=/ { callee = name_of(substr($0, 5)); next }
/^calls=/ {
  split(substr($0, 7), f, " ")
  if (!allocator(caller) && callee ~ /^(mi_malloc_aligned|mi_zalloc_aligned|mi_malloc|mi_zalloc|mi_calloc|malloc|calloc|posix_memalign|aligned_alloc)$/) allocs += f[1]
  if (!allocator(caller) && callee ~ /^(mi_realloc_aligned|mi_realloc|realloc)$/) reallocs += f[1]
}
END { printf "%d %d\n", allocs, reallocs }
