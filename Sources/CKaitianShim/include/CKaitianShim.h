#include "kt_sync.h"
#include "kt_reduce.h"
