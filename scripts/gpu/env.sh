# Environment for building and running against the Debian packages unpacked
# into /opt/sys on the GPU machine. Source it: `source scripts/gpu/env.sh`.
export PATH=/opt/sys/usr/bin:$PATH
export LD_LIBRARY_PATH=/opt/sys/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LIBRARY_PATH=/opt/sys/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}
export PKG_CONFIG_SYSROOT_DIR=/opt/sys
export PKG_CONFIG_PATH=/opt/sys/usr/lib/x86_64-linux-gnu/pkgconfig
