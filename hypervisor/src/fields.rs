//! Field-by-field copies between petrel's register types and a backend's, which use the same
//! field names: one list of names per structure, shared by every backend's conversions.

/// Builds `$ty` from `$src` by copying the listed fields of the same names, plus any
/// `extra: value` fields after a `;`.
macro_rules! copy_fields {
    ($src:expr, $ty:ident { $($f:ident),* $(,)? } $(; $($x:ident: $v:expr),*)?) => {
        $ty { $($f: $src.$f,)* $($($x: $v),*)? }
    };
}

/// Copies the general-purpose register fields (shared by both directions).
macro_rules! gp_fields {
    ($src:expr, $ty:ident) => {
        copy_fields!(
            $src,
            $ty {
                rax,
                rbx,
                rcx,
                rdx,
                rsi,
                rdi,
                rsp,
                rbp,
                r8,
                r9,
                r10,
                r11,
                r12,
                r13,
                r14,
                r15,
                rip,
                rflags,
            }
        )
    };
}

/// Copies the segment descriptor-cache fields.
macro_rules! seg_fields {
    ($src:expr, $ty:ident $(; $($x:ident: $v:expr),*)?) => {
        copy_fields!($src, $ty {
            base, limit, selector, type_, present, dpl, db, s, l, g, avl, unusable,
        } $(; $($x: $v),*)?)
    };
}

/// Special registers: `$seg`/`$dt` convert each segment and descriptor table, the control
/// registers are copied, and `extra: value` fields follow a `;`.
macro_rules! sregs {
    ($s:expr, $ty:ident, $seg:ident, $dt:ident $(; $($x:ident: $v:expr),*)?) => {
        $ty {
            cs: $seg(&$s.cs),
            ds: $seg(&$s.ds),
            es: $seg(&$s.es),
            fs: $seg(&$s.fs),
            gs: $seg(&$s.gs),
            ss: $seg(&$s.ss),
            tr: $seg(&$s.tr),
            ldt: $seg(&$s.ldt),
            gdt: $dt(&$s.gdt),
            idt: $dt(&$s.idt),
            cr0: $s.cr0,
            cr2: $s.cr2,
            cr3: $s.cr3,
            cr4: $s.cr4,
            cr8: $s.cr8,
            efer: $s.efer,
            apic_base: $s.apic_base,
            $($($x: $v),*)?
        }
    };
}
