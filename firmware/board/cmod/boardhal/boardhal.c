// mp_hal_time_ns for the qemu port, so that MICROPY_VFS_LFS2 links.
// littlefs stamps each file's mtime with it. The emulated board has no RTC:
// time runs from the millisecond tick since reset (epoch 2000-01-01), which
// is all a timestamp on a test filesystem needs.
#include "py/mphal.h"

uint64_t mp_hal_time_ns(void) {
    return (uint64_t)mp_hal_ticks_ms() * 1000000ULL;
}
