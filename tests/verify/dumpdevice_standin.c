/*
 * Layout stand-in, NOT FreeBSD: structs and variables carrying the type and member names that FreeBSD's
 * virtio-blk driver, virtqueue code and newbus use (virtqueue, vq_desc_extra, vring, vring_desc,
 * vtblk_softc, vtblk_request, virtio_blk_outhdr, sglist, sglist_seg, mtx, devclass, device;
 * vtblk_devclass, devclasses, kdb_thread, kdb_frame), laid out differently on purpose (extra members,
 * other order), written for fbsd-hil's tests. Built with gcc -g at test time so the DWARF reader and the
 * object finder are exercised against real compiler output; `main` prints the true offsets (offsetof)
 * so the test can compare them with what the DWARF reader found.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct lock_object { const char *lo_name; unsigned lo_flags; unsigned lo_data; void *lo_witness; };
struct mtx { struct lock_object lock_object; volatile uintptr_t mtx_lock; };
struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct vring { unsigned int num; struct vring_desc *desc; void *avail; void *used; };
struct vq_desc_extra { void *cookie; uint16_t ndescs; struct vring_desc *indirect; uint64_t indirect_paddr; };
struct virtqueue {
	char vq_name[40]; void *vq_dev; uint32_t vq_flags; uint16_t vq_queue_index; uint16_t vq_nentries;
	int vq_max_indirect_size; int vq_indirect_mem_size; void *vq_ring_mem; struct vring vq_ring;
	uint16_t vq_desc_head_idx; uint16_t vq_free_cnt; uint16_t vq_used_cons_idx; uint16_t vq_queued_cnt;
	uint64_t vq_spare; struct vq_desc_extra vq_descx[0];
};
struct virtio_blk_outhdr { uint32_t type; uint32_t ioprio; uint64_t sector; };
struct vtblk_request {
	void *vbr_bp; struct virtio_blk_outhdr vbr_hdr; uint8_t vbr_ack; struct { void *tqe_next; void **tqe_prev; } vbr_link;
};
struct sglist_seg { uint64_t ss_paddr; size_t ss_len; };
struct sglist { unsigned sg_refs; unsigned short sg_maxseg; unsigned short sg_nseg; struct sglist_seg *sg_segs; };
struct vtblk_softc {
	uint64_t vtblk_features; void *vtblk_dev; struct sglist *vtblk_sglist; struct mtx vtblk_mtx;
	struct virtqueue *vtblk_vq; int vtblk_request_count;
	struct { struct vtblk_request *tqh_first; struct vtblk_request **tqh_last; } vtblk_req_free;
	struct vtblk_request vtblk_dump_request;
};
struct devclass {
	struct { struct devclass *tqe_next; struct devclass **tqe_prev; } link; int maxunit; char *name;
	struct device **devices;
};
struct device { void *ivars; struct devclass *devclass; int unit; char *nameunit; char *desc; void *softc; };

static struct devclass *vtblk_devclass;
struct { struct devclass *tqh_first; struct devclass **tqh_last; } devclasses;
void *kdb_thread;
void *kdb_frame;

#define M(s, f) printf("\"%s.%s\": [%zu, %zu],\n", #s, #f, offsetof(struct s, f), sizeof(((struct s *)0)->f))
int main(void)
{
	vtblk_devclass = (void *)&devclasses;
	printf("{\n");
	M(virtqueue, vq_free_cnt); M(virtqueue, vq_queued_cnt); M(virtqueue, vq_desc_head_idx);
	M(virtqueue, vq_used_cons_idx); M(virtqueue, vq_descx); M(virtqueue, vq_ring.desc);
	M(virtqueue, vq_nentries); M(vq_desc_extra, cookie); M(vq_desc_extra, ndescs);
	M(vq_desc_extra, indirect_paddr); M(vtblk_softc, vtblk_mtx.mtx_lock); M(vtblk_softc, vtblk_vq);
	M(vtblk_softc, vtblk_sglist); M(vtblk_softc, vtblk_dump_request); M(vtblk_request, vbr_hdr.sector);
	M(vtblk_request, vbr_ack); M(vtblk_request, vbr_bp); M(sglist, sg_nseg); M(sglist, sg_segs);
	M(sglist_seg, ss_len); M(devclass, devices); M(devclass, link.tqe_next); M(device, nameunit);
	M(vtblk_softc, vtblk_req_free.tqh_first); M(vtblk_softc, vtblk_req_free.tqh_last);
	M(vtblk_request, vbr_link.tqe_next); M(vtblk_request, vbr_link.tqe_prev);
	M(device, softc);
	printf("\"sizeof.vq_desc_extra\": [%zu, 0], \"sizeof.virtqueue\": [%zu, 0]\n}\n",
	    sizeof(struct vq_desc_extra), sizeof(struct virtqueue));
	return vtblk_devclass == 0;
}
