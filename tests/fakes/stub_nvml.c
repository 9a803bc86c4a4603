/* A stand-in for the driver's libnvidia-ml.so.1 on machines without one: the few functions
   tests/test_fault_nvml.py calls through bench/fault_nvml.py's shim. A fake, named as such. */
#include <string.h>

static int initialised;

int nvmlInit_v2(void) { initialised++; return 0; }
int nvmlInitWithFlags(unsigned flags) { (void)flags; initialised++; return 0; }
int nvmlShutdown(void) { if (!initialised) return 1; initialised--; return 0; }
int nvmlDeviceGetCount_v2(unsigned *count) { if (!initialised) return 1; *count = 3; return 0; }
const char *nvmlErrorString(int code) { (void)code; return "stub error"; }
int nvmlSystemGetDriverVersion(char *out, unsigned length) {
    if (!initialised) return 1;
    strncpy(out, "0.0.stub", length);
    return 0;
}
