/* Stand-in for an NVIDIA shared library: a real ELF shared object built with the real SONAME,
 * so ldconfig and the dynamic loader resolve it, exporting only the version it stands for. */
const char *gpufleet_standin_version(void) { return STANDIN_VERSION; }
