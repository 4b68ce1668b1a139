SUMMARY = "ONNX Runtime with the CUDA and TensorRT execution providers (JetPack 6)"
DESCRIPTION = "The inference runtime crlm loads at run time (libonnxruntime.so, crlm's feature \
               onnx): the study's locked model runs through the TensorRT provider on the Orin's \
               GPU, CUDA for what TensorRT does not take. Built from source: no layer, \
               meta-tegra included, has a recipe."
HOMEPAGE = "https://onnxruntime.ai"
BUGTRACKER = "https://github.com/microsoft/onnxruntime/issues"
SECTION = "libs"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=0f7e3b1308cb5c00b372a6e78835732d"
CVE_PRODUCT = "microsoft:onnxruntime"

# TensorRT 10.3 and cuDNN 9.3 from JetPack 6 (meta-tegra). The TensorRT provider uses
# TensorRT's own ONNX parser (tensorrt-plugins) rather than building onnx-tensorrt.
DEPENDS += "\
    cuda-cccl \
    cuda-cudart \
    cuda-nvrtc \
    cudnn \
    libcublas \
    libcufft \
    libcurand \
    tensorrt-core \
    tensorrt-plugins \
    zlib \
"

# A main-branch commit of the 1.20/1.21 cycle (onnx 1.16.1, abseil 20240722, cuDNN frontend 1.7,
# onnx-tensorrt 10.7): crlm needs ONNX Runtime 1.17 or later (ort's api-17). Its cmake/deps.txt
# is pinned in onnxruntime-deps.inc; move both together.
PV = "1.20+git"

SRC_URI = "git://github.com/microsoft/onnxruntime.git;protocol=https;nobranch=1"
SRCREV = "008eeb96a1e2e8d5c23519a81a837f52b54d384b"

require onnxruntime-deps.inc

S = "${WORKDIR}/git"

inherit cuda cmake python3native pkgconfig

COMPATIBLE_MACHINE = "(tegra)"
# Orin (AGX, NX, Nano): compute capability 8.7.
CUDA_ARCHITECTURES = "87"

OECMAKE_SOURCEPATH = "${S}/cmake"
EXTRA_OECMAKE += "\
    -Donnxruntime_BUILD_SHARED_LIB=ON \
    -Donnxruntime_BUILD_UNIT_TESTS=OFF \
    -Donnxruntime_BUILD_BENCHMARKS=OFF \
    -Donnxruntime_ENABLE_PYTHON=OFF \
    -Donnxruntime_USE_CUDA=ON \
    -Donnxruntime_USE_TENSORRT=ON \
    -Donnxruntime_USE_TENSORRT_BUILTIN_PARSER=ON \
    -Donnxruntime_USE_XNNPACK=OFF \
    -Donnxruntime_CUDA_HOME=${STAGING_DIR_HOST}/usr/local/cuda-${CUDA_VERSION} \
    -Donnxruntime_CUDNN_HOME=${STAGING_DIR_HOST}${prefix} \
    -Donnxruntime_TENSORRT_HOME=${STAGING_DIR_HOST}${prefix} \
    -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES} \
"

# Point ONNX Runtime's dependency list at the copies BitBake fetched (CMake still checks each
# SHA-1 from deps.txt), so the configure step makes no network access.
do_configure:prepend() {
    for dep in ${ORT_DEPS}; do
        file="${WORKDIR}/ort-deps/onnxruntime-${PV}-$(echo "$dep" | tr _ -).zip"
        [ -f "$file" ] || bbfatal "ONNX Runtime dependency $dep was not fetched ($file)"
        sed -i "s|^$dep;[^;]*;|$dep;$file;|" ${S}/cmake/deps.txt
    done
}

# libonnxruntime.so.1.x and the provider libraries ONNX Runtime dlopens by their unversioned
# names (CUDA, TensorRT, shared); crlm finds libonnxruntime.so through the loader path.
FILES:${PN} += "${libdir}/libonnxruntime_providers_*.so"
FILES_SOLIBSDEV = "${libdir}/libonnxruntime.so"
# nooelint: oelint.vars.insaneskip - the providers are dlopened by their unversioned .so names
INSANE_SKIP:${PN} += "dev-so"
RDEPENDS:${PN} += "\
    cuda-cudart \
    cudnn \
    libcublas \
    libcufft \
    libcurand \
    tensorrt-core \
    tensorrt-plugins \
"
