# A user C module with no Python module of its own: it supplies the HAL
# functions the qemu port lacks for littlefs (vfs.VfsLfs2).
BOARDHAL_DIR := $(USERMOD_DIR)
SRC_USERMOD_C += $(BOARDHAL_DIR)/boardhal.c
