//! The command-line parsing and presets of `bench`, against PyTorch's script.

use super::plot::size_label_approx;
use super::*;

#[test]
fn sizes_parse_like_pytorchs_script() {
    assert_eq!(parse_size("1M"), Ok(1 << 20));
    assert_eq!(parse_size("16m"), Ok(16 << 20));
    assert_eq!(parse_size("64K"), Ok(64 << 10));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("1.5M"), Ok(3 << 19));
    assert_eq!(parse_size("1000"), Ok(1000));
    assert_eq!(parse_size("2^20"), Ok(1 << 20));
    assert!(parse_size("0").is_err());
    assert!(parse_size("1.5").is_err());
    assert!(parse_size("x").is_err());
}

#[test]
fn rules_match_pytorchs_script() {
    let bytes = |s: &str| parse_rules(s).unwrap().0[0].bytes_per_param();
    // BYTES in torch_optim_bench.py.
    assert_eq!(bytes("sgd"), 12);
    assert_eq!(bytes("sgd_momentum"), 20);
    assert_eq!(bytes("adagrad"), 20);
    assert_eq!(bytes("rmsprop"), 20);
    assert_eq!(bytes("adam"), 28);
    assert_eq!(bytes("adamw"), 28);
    assert_eq!(bytes("adam_amsgrad"), 36);
    assert_eq!(bytes("adam_clip"), 32);
    assert_eq!(bytes("lamb"), 28);
    // Not in PyTorch's script: θ, g and two state tensors; one; three.
    assert_eq!(bytes("adadelta"), 28);
    assert_eq!(bytes("rprop"), 28);
    assert_eq!(bytes("lion"), 20);
    assert_eq!(bytes("ademamix"), 36);
    assert_eq!(bytes("radam"), 28);
    assert_eq!(bytes("adamax"), 28);
    assert_eq!(bytes("nadam"), 28);
    assert_eq!(bytes("asgd"), 20);
    // `all` is every rule's presets, each once.
    let presets: usize = wgpu_optim::RuleKind::ALL
        .iter()
        .map(|r| r.presets().len())
        .sum();
    assert_eq!(parse_rules("all").unwrap().0.len(), presets);
    assert!(presets >= 10);
    assert!(parse_rules("lars").is_err());
}

#[test]
fn split_covers_everything() {
    let l = split_lengths(10, 3);
    assert_eq!(l, vec![4, 3, 3]);
    let v: Vec<f32> = (0..10).map(|i| i as f32).collect();
    let s = split(&v, &l);
    assert_eq!(s[2], &[7.0, 8.0, 9.0]);
    assert!(normal_vec(1001, 1, true)
        .iter()
        .all(|&g| g != 0.0 && g.is_finite()));
    assert_eq!(size_label(1 << 20), "1M");
    assert_eq!(size_label(1000), "1000");
}

#[test]
fn plot_takes_a_png_and_draws_the_rows() {
    use std::path::Path;
    assert!(plot::check(Path::new("bench.svg")).is_err());
    assert!(plot::check(Path::new("bench")).is_err());
    assert_eq!(size_label_approx(4096.0), "4K");
    assert_eq!(size_label_approx(1.5 * (1 << 20) as f64), "1.5M");
    assert_eq!(size_label_approx(100.0), "100");
    #[cfg(feature = "plot")]
    {
        let dir = std::env::temp_dir().join(format!("wgpu-optim-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bench.png");
        plot::check(&file).unwrap();
        let rows = [
            ("sgd", 1 << 12, Backend::Cpu, 50.0),
            ("sgd", 1 << 20, Backend::Cpu, 80.0),
            ("sgd", 1 << 12, Backend::Gpu, 5.0),
            ("sgd", 1 << 20, Backend::Gpu, 900.0),
            ("adam", 1 << 20, Backend::Gpu, f64::NAN),
        ];
        plot::draw(&file, &rows, [Some("cpu"), Some("gpu")]).unwrap();
        let png = std::fs::read(&file).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        assert!(plot::draw(&file, &[], [Some("cpu"), None]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn verify_bound_is_a_few_ulp_per_step() {
    let start = [1.0f32, -2.0, 1e-6];
    let cpu = [0.999f32, -1.999, -0.001];
    assert!(compare(&cpu, &cpu, &start, 5).ok());
    // One ulp off on each element: within the bound.
    let near: Vec<f32> = cpu
        .iter()
        .map(|x| f32::from_bits(x.to_bits() + 1))
        .collect();
    let v = compare(&near, &cpu, &start, 5);
    assert!(
        v.ok() && v.max_err > 0.0 && v.max_err <= 2.0,
        "{}",
        v.max_err
    );
    // Not stepped at all, or NaN: caught.
    assert!(!compare(&start, &cpu, &start, 5).ok());
    assert!(!compare(&[f32::NAN, -1.999, -0.001], &cpu, &start, 5).ok());
}
