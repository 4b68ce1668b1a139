SUMMARY = "The study's locked model package, as a .tar for the model slot"
DESCRIPTION = "Deploys the package the study's team hands over (packed with `crlm model pack`, \
               signed with their key) as crlm-model.tar for crlm-model-bundle and the first flash. The file is \
               the study's, not the layer's: CRLM_MODEL_TAR names it (local.conf or the kas file)."
SECTION = "science"
LICENSE = "CLOSED"

inherit deploy nopackages

CRLM_MODEL_TAR ??= "${TOPDIR}/crlm-model.tar"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_deploy() {
    [ -f "${CRLM_MODEL_TAR}" ] || bbfatal "no model package at ${CRLM_MODEL_TAR}: set CRLM_MODEL_TAR to the study's .tar (crlm model pack)"
    install -m 0644 "${CRLM_MODEL_TAR}" ${DEPLOYDIR}/crlm-model.tar
}
do_deploy[file-checksums] += "${CRLM_MODEL_TAR}:True"
addtask deploy after do_install before do_build
