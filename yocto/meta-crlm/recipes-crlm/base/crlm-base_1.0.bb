SUMMARY = "crlm-edge box layout: state and model partitions, RAUC rootfs A/B backend"
DESCRIPTION = "systemd-repart definitions for the model and state partitions, their mount units, \
               and the RAUC custom bootloader backend over L4T's rootfs A/B (nvbootctrl)."
SECTION = "base"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

inherit systemd

SRC_URI = "\
    file://50-crlm-model.conf \
    file://60-crlm-data.conf \
    file://crlm-data-layout.service \
    file://data.mount \
    file://etc-crlm.mount \
    file://usr-share-crlm-model.mount \
    file://var-lib-crlm.mount \
    file://rauc-tegra-backend \
"
S = "${WORKDIR}"

do_install() {
    install -d ${D}${nonarch_libdir}/repart.d ${D}${systemd_system_unitdir} ${D}${libexecdir}/crlm
    install -m 0644 ${S}/50-crlm-model.conf ${S}/60-crlm-data.conf ${D}${nonarch_libdir}/repart.d/
    install -m 0644 ${S}/data.mount ${S}/crlm-data-layout.service ${S}/var-lib-crlm.mount \
        ${S}/etc-crlm.mount ${S}/usr-share-crlm-model.mount ${D}${systemd_system_unitdir}/
    install -d ${D}/data
    install -m 0755 ${S}/rauc-tegra-backend ${D}${libexecdir}/crlm/rauc-tegra-backend
}

SYSTEMD_SERVICE:${PN} = "data.mount crlm-data-layout.service var-lib-crlm.mount etc-crlm.mount usr-share-crlm-model.mount"
FILES:${PN} += "/data ${nonarch_libdir}/repart.d ${systemd_system_unitdir}"
RDEPENDS:${PN} += "tegra-redundant-boot-base"
# The front panel's SPI bus (/dev/spidev*), where the kernel builds spidev as a module.
RRECOMMENDS:${PN} += "kernel-module-spidev"
COMPATIBLE_MACHINE = "(tegra)"
