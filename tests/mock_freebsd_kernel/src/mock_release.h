/* MockFreeBSDKernel release (fbsd-hil test stand-in; NOT FreeBSD): what it claims to be, in its banner,
 * its osrelease/osreldate symbols and its ELF ABI note (as FreeBSD kernels carry __FreeBSD_version). */
#ifdef MOCK_CURRENT_KERNEL /* behaves like a 13+ kernel at GRUB's hand-over */
#define MOCK_RELEASE "15.0-MOCK"
#define MOCK_OSRELDATE 1500000
#else
#define MOCK_RELEASE "12.1-MOCK"
#define MOCK_OSRELDATE 1201000
#endif
