/* Entry of the bare-metal test guest.
 *
 * A Xen PVH ELF note names _start as the 32-bit entry: the VMM enters it in
 * protected mode with paging off, flat segments, interrupts disabled and
 * %ebx pointing at struct hvm_start_info (the command line, the memory
 * map). _start sets up a stack and calls pv_main(start_info), which never
 * returns (it powers the machine off); a halt loop catches it if it does.
 */
    .section .note.Xen, "a"
    .align 4
    .long 4             /* namesz */
    .long 4             /* descsz */
    .long 18            /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start

    .text
    .code32
    .globl _start
_start:
    cli
    mov $stack_top, %esp
    xor %ebp, %ebp
    push %ebx
    call pv_main
1:  hlt
    jmp 1b

    .bss
    .align 16
    .space 65536
stack_top:

    .section .note.GNU-stack, "", @progbits
