/* The .modinfo section as the kernel's MODULE_* macros emit it: modinfo and depmod read it. */
static const char modinfo[] __attribute__((section(".modinfo"), used, aligned(1))) =
    "license=NVIDIA\0"
    "version=@DRIVER_VERSION@\0"
    "description=gpufleet stand-in for the NVIDIA kernel module\0"
    "name=nvidia";
