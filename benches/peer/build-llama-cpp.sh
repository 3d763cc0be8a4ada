#!/usr/bin/env bash
# Builds the peer tools (llama-bench, llama-server, llama-embedding) from the llama.cpp tree
# vendored in the llama-cpp-python source package, with the same ggml build
# settings llama-cpp-sys-2 0.1.161 uses for Outpost, so that the peer
# benchmark compares runtimes rather than compilers or instruction sets.
#
# Outpost builds with `-C target-cpu=x86-64-v3` (.cargo/config.toml). From
# that, llama-cpp-sys-2's build.rs derives: GGML_NATIVE=OFF, one GGML_<feat>=ON
# per Rust target feature it recognises (avx, avx2, bmi2, f16c, fma, sse4.2),
# `-march=x86-64-v3` in C/C++ flags, GGML_OPENMP=ON (default `openmp`
# feature), BUILD_SHARED_LIBS=OFF, LLAMA_CURL=OFF, CMake build type Release.
# The cmake crate adds cc's flags `-ffunction-sections -fdata-sections -fPIC
# -m64`. Everything else (GGML_LLAMAFILE=ON, GGML_CPU_REPACK=ON, no BLAS) is
# left at llama.cpp's defaults by both. These were read from the CMakeCache of
# an Outpost build. Never use GGML_NATIVE=ON / -march=native: the build hosts
# report AMX, and ggml's AMX kernels die with SIGILL there.
#
# Usage: build-llama-cpp.sh            builds into benches/peer/build/
#        PEER_TARGETS="llama-quantize llama-imatrix" build-llama-cpp.sh
#                                      builds other llama.cpp tools the same way
# Output: build/bin/<tool> for each target (default llama-bench, llama-server,
#         llama-embedding), build/peer-version.txt
set -euo pipefail

readonly PKG_NAME=llama-cpp-python
readonly PKG_VERSION=0.3.36

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build_root="$here/build"
sdist="$build_root/llama_cpp_python-$PKG_VERSION.tar.gz"
src_root="$build_root/llama_cpp_python-$PKG_VERSION"
llama_src="$src_root/vendor/llama.cpp"
cmake_build="$build_root/cmake-$PKG_VERSION"
bin_dir="$build_root/bin"
jobs=${PEER_BUILD_JOBS:-2}
read -r -a targets <<<"${PEER_TARGETS:-llama-bench llama-server llama-embedding}"

die() {
    echo "build-llama-cpp.sh: error: $*" >&2
    exit 1
}

for tool in cmake cc c++ tar; do
    command -v "$tool" >/dev/null || die "'$tool' not found on PATH"
done

mkdir -p "$build_root" "$bin_dir"

if [[ ! -f "$sdist" ]]; then
    command -v python3 >/dev/null || die "python3 (with pip) is needed to fetch $PKG_NAME==$PKG_VERSION"
    echo "fetching $PKG_NAME==$PKG_VERSION source package ..." >&2
    python3 -m pip download --quiet --no-deps --no-binary :all: \
        "$PKG_NAME==$PKG_VERSION" -d "$build_root" ||
        die "pip download of $PKG_NAME==$PKG_VERSION failed (is the package registry reachable?)"
    [[ -f "$sdist" ]] || die "pip download did not produce $sdist"
fi

if [[ ! -f "$llama_src/tools/server/CMakeLists.txt" ]]; then
    echo "unpacking $sdist ..." >&2
    rm -rf "$src_root"
    tar -xzf "$sdist" -C "$build_root"
    [[ -f "$llama_src/tools/llama-bench/llama-bench.cpp" ]] ||
        die "$sdist has no vendor/llama.cpp/tools/llama-bench"
fi

# The source package keeps the llama.cpp submodule's git metadata (a shallow
# clone), so its commit is known but its build number is not (`rev-list
# --count` on a shallow clone says 1). Pass both explicitly so build-info
# never comes from whatever git repository encloses this folder.
llama_commit=unknown
head_file="$src_root/.git/modules/vendor/llama.cpp/HEAD"
if [[ -f "$head_file" ]]; then
    llama_commit=$(head -c 9 "$head_file")
fi
llama_version=$(sed -n 's/^set(LLAMA_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))$/\2/p' \
    "$llama_src/CMakeLists.txt" | paste -sd. -)
ggml_version=$(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))$/\2/p' \
    "$llama_src/ggml/CMakeLists.txt" | paste -sd. -)

readonly arch_flags="-march=x86-64-v3 -ffunction-sections -fdata-sections -fPIC -m64"

cmake_args=(
    -S "$llama_src" -B "$cmake_build"
    -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_C_FLAGS=$arch_flags"
    "-DCMAKE_CXX_FLAGS=$arch_flags"
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DGGML_AVX=ON
    -DGGML_AVX2=ON
    -DGGML_FMA=ON
    -DGGML_F16C=ON
    -DGGML_BMI2=ON
    -DGGML_SSE42=ON
    -DGGML_AVX512=OFF
    -DGGML_AVX_VNNI=OFF
    -DGGML_AMX_TILE=OFF
    -DGGML_AMX_INT8=OFF
    -DGGML_AMX_BF16=OFF
    -DGGML_OPENMP=ON
    -DGGML_LLAMAFILE=ON
    -DGGML_CPU_REPACK=ON
    -DGGML_BLAS=OFF
    -DGGML_CCACHE=OFF
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_BUILD_NUMBER=0
    "-DLLAMA_BUILD_COMMIT=$llama_commit"
)

echo "configuring llama.cpp $llama_version, commit $llama_commit (ggml $ggml_version) ..." >&2
cmake "${cmake_args[@]}" >"$build_root/cmake-configure.log" 2>&1 ||
    die "cmake configure failed; see $build_root/cmake-configure.log"

echo "building ${targets[*]} with -j$jobs (10+ minutes on 2 cores the first time) ..." >&2
cmake --build "$cmake_build" --config Release -j "$jobs" \
    --target "${targets[@]}" >"$build_root/cmake-build.log" 2>&1 ||
    die "cmake build failed; see $build_root/cmake-build.log"

for exe in "${targets[@]}"; do
    [[ -x "$cmake_build/bin/$exe" ]] || die "$exe was not produced in $cmake_build/bin"
    cp -f "$cmake_build/bin/$exe" "$bin_dir/$exe"
done

peer_version=$(printf 'llama.cpp %s, commit %s (ggml %s, from %s %s)' \
    "$llama_version" "$llama_commit" "$ggml_version" "$PKG_NAME" "$PKG_VERSION")
echo "$peer_version" >"$build_root/peer-version.txt"
echo "built: ${targets[*]} in $bin_dir ($peer_version)" >&2
