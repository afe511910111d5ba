#include <sys/types.h>
#include <libdlm.h>
