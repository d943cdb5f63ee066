//! The V4L2 ABI the bindings must match, written down from the kernel rather than from bindgen:
//! struct sizes and field offsets of what `v4l` (nokhwa's backend) passes to ioctl(2) on 64-bit
//! Linux, per `include/uapi/linux/videodev2.h`, and the request numbers of those ioctls as the
//! kernel defines them (`_IOWR('V', 9, struct v4l2_buffer)` = 0xc0585609: the size is encoded in
//! bits 16..30, and `v4l` computes its numbers from `size_of` of these very structs, so a wrong
//! size means every ioctl is rejected with ENOTTY). bindgen's own generated layout tests only
//! compare Rust with what clang parsed; these compare both with the kernel.
//!
//! A macro, so the same checks run against the target's bindings and (on x86_64) against the
//! aarch64 file.

/// Asserts a struct's size and the offsets of the named fields.
macro_rules! layout {
    ($t:ty, size $size:expr $(, $field:ident @ $offset:expr)* $(,)?) => {{
        assert_eq!(
            core::mem::size_of::<$t>(),
            $size,
            "size_of::<{}>()",
            stringify!($t)
        );
        $(assert_eq!(
            core::mem::offset_of!($t, $field),
            $offset,
            "offset of {}::{}",
            stringify!($t),
            stringify!($field)
        );)*
    }};
}

/// The argument size an ioctl request number encodes (asm-generic/ioctl.h, which both x86_64 and
/// arm64 use: nr in bits 0..8, type 8..16, size 16..30, direction 30..32).
pub fn ioctl_size(request: u32) -> usize {
    ((request >> 16) & 0x3fff) as usize
}

macro_rules! abi_tests {
    () => {
        use crate::abi_tests::ioctl_size;
        use core::mem::size_of;

        #[test]
        fn ioctl_numbers_encode_the_struct_sizes() {
            // (request number as the kernel defines it on 64-bit, size of its argument here)
            let requests: [(&str, u32, usize); 17] = [
                ("VIDIOC_QUERYCAP", 0x8068_5600, size_of::<v4l2_capability>()),
                ("VIDIOC_ENUM_FMT", 0xc040_5602, size_of::<v4l2_fmtdesc>()),
                ("VIDIOC_G_FMT", 0xc0d0_5604, size_of::<v4l2_format>()),
                ("VIDIOC_S_FMT", 0xc0d0_5605, size_of::<v4l2_format>()),
                ("VIDIOC_REQBUFS", 0xc014_5608, size_of::<v4l2_requestbuffers>()),
                ("VIDIOC_QUERYBUF", 0xc058_5609, size_of::<v4l2_buffer>()),
                ("VIDIOC_QBUF", 0xc058_560f, size_of::<v4l2_buffer>()),
                ("VIDIOC_DQBUF", 0xc058_5611, size_of::<v4l2_buffer>()),
                ("VIDIOC_G_PARM", 0xc0cc_5615, size_of::<v4l2_streamparm>()),
                ("VIDIOC_S_PARM", 0xc0cc_5616, size_of::<v4l2_streamparm>()),
                ("VIDIOC_G_CTRL", 0xc008_561b, size_of::<v4l2_control>()),
                ("VIDIOC_QUERYCTRL", 0xc044_5624, size_of::<v4l2_queryctrl>()),
                ("VIDIOC_QUERYMENU", 0xc02c_5625, size_of::<v4l2_querymenu>()),
                ("VIDIOC_G_EXT_CTRLS", 0xc020_5647, size_of::<v4l2_ext_controls>()),
                ("VIDIOC_ENUM_FRAMESIZES", 0xc02c_564a, size_of::<v4l2_frmsizeenum>()),
                ("VIDIOC_ENUM_FRAMEINTERVALS", 0xc034_564b, size_of::<v4l2_frmivalenum>()),
                ("VIDIOC_QUERY_EXT_CTRL", 0xc0e8_5667, size_of::<v4l2_query_ext_ctrl>()),
            ];
            for (name, request, size) in requests {
                assert_eq!(ioctl_size(request), size, "{name} ({request:#x})");
            }
        }

        #[test]
        fn v4l2_buffer_layout() {
            // struct timeval is 16 bytes on 64-bit, 8-aligned: 4 bytes of padding after `field`.
            layout!(timeval, size 16, tv_sec @ 0, tv_usec @ 8);
            layout!(v4l2_timecode, size 16, frames @ 8, userbits @ 12);
            layout!(
                v4l2_buffer, size 88,
                index @ 0, type_ @ 4, bytesused @ 8, flags @ 12, field @ 16, timestamp @ 24,
                timecode @ 40, sequence @ 56, memory @ 60, m @ 64, length @ 72, reserved2 @ 76,
                __bindgen_anon_1 @ 80,
            );
            // The `m` union holds a pointer (userptr/planes): 8 bytes.
            assert_eq!(size_of::<v4l2_buffer__bindgen_ty_1>(), 8);
        }

        #[test]
        fn v4l2_format_layout() {
            // The `fmt` union contains pointers (v4l2_window), so it is 8-aligned: offset 8.
            layout!(v4l2_format, size 208, type_ @ 0, fmt @ 8);
            layout!(
                v4l2_pix_format, size 48,
                width @ 0, height @ 4, pixelformat @ 8, field @ 12, bytesperline @ 16,
                sizeimage @ 20, colorspace @ 24, priv_ @ 28, flags @ 32, quantization @ 40,
                xfer_func @ 44,
            );
        }

        #[test]
        fn capability_and_format_enumeration_layouts() {
            layout!(
                v4l2_capability, size 104,
                driver @ 0, card @ 16, bus_info @ 48, version @ 80, capabilities @ 84,
                device_caps @ 88, reserved @ 92,
            );
            layout!(
                v4l2_fmtdesc, size 64,
                index @ 0, type_ @ 4, flags @ 8, description @ 12, pixelformat @ 44,
                mbus_code @ 48, reserved @ 52,
            );
            layout!(
                v4l2_frmsizeenum, size 44,
                index @ 0, pixel_format @ 4, type_ @ 8, __bindgen_anon_1 @ 12, reserved @ 36,
            );
            layout!(
                v4l2_frmivalenum, size 52,
                index @ 0, pixel_format @ 4, width @ 8, height @ 12, type_ @ 16,
                __bindgen_anon_1 @ 20, reserved @ 44,
            );
        }

        #[test]
        fn streaming_and_parameter_layouts() {
            layout!(
                v4l2_requestbuffers, size 20,
                count @ 0, type_ @ 4, memory @ 8, capabilities @ 12, flags @ 16, reserved @ 17,
            );
            layout!(v4l2_streamparm, size 204, type_ @ 0, parm @ 4);
            layout!(v4l2_fract, size 8, numerator @ 0, denominator @ 4);
            layout!(
                v4l2_captureparm, size 40,
                capability @ 0, capturemode @ 4, timeperframe @ 8, extendedmode @ 16,
                readbuffers @ 20, reserved @ 24,
            );
        }

        #[test]
        fn control_layouts() {
            layout!(v4l2_control, size 8, id @ 0, value @ 4);
            layout!(
                v4l2_queryctrl, size 68,
                id @ 0, type_ @ 4, name @ 8, minimum @ 40, maximum @ 44, step @ 48,
                default_value @ 52, flags @ 56, reserved @ 60,
            );
            // Packed in the header: no padding before the 8-byte union or at the end.
            layout!(v4l2_querymenu, size 44, id @ 0, index @ 4, __bindgen_anon_1 @ 8, reserved @ 40);
            layout!(
                v4l2_ext_control, size 20,
                id @ 0, size @ 4, reserved2 @ 8, __bindgen_anon_1 @ 12,
            );
            layout!(
                v4l2_ext_controls, size 32,
                count @ 4, error_idx @ 8, request_fd @ 12, reserved @ 16, controls @ 24,
            );
            layout!(
                v4l2_query_ext_ctrl, size 232,
                id @ 0, type_ @ 4, name @ 8, minimum @ 40, maximum @ 48, step @ 56,
                default_value @ 64, flags @ 72, elem_size @ 76, elems @ 80, nr_of_dims @ 84,
                dims @ 88, reserved @ 104,
            );
        }

        #[test]
        fn constants_the_capture_path_uses() {
            assert_eq!(V4L2_CAP_VIDEO_CAPTURE, 0x0000_0001);
            assert_eq!(V4L2_CAP_STREAMING, 0x0400_0000);
            assert_eq!(V4L2_CAP_DEVICE_CAPS, 0x8000_0000);
            assert_eq!(v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE, 1);
            assert_eq!(v4l2_memory_V4L2_MEMORY_MMAP, 1);
            assert_eq!(v4l2_field_V4L2_FIELD_NONE, 1);
            assert_eq!(v4l2_frmsizetypes_V4L2_FRMSIZE_TYPE_DISCRETE, 1);
            assert_eq!(v4l2_frmivaltypes_V4L2_FRMIVAL_TYPE_DISCRETE, 1);
        }
    };
}
