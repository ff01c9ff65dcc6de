use super::*;

/// Scalar state of every kind torch has goes through a file and back
/// bit for bit: float32 and float64 numbers in each tensor's state, a
/// float64 number in the group (schedule-free keeps its `lr_max` and
/// `weight_sum` there); tensors that disagree are refused.
#[test]
fn scalar_state_of_every_kind_round_trips() {
    let spec = [
        ScalarState {
            name: "a",
            dtype: ScalarDtype::F32,
            home: ScalarHome::Tensor,
        },
        ScalarState {
            name: "b",
            dtype: ScalarDtype::F64,
            home: ScalarHome::Tensor,
        },
        ScalarState {
            name: "c",
            dtype: ScalarDtype::F64,
            home: ScalarHome::Group,
        },
    ];
    let values = vec![
        ("a".to_string(), 0.1f32 as f64),
        ("b".to_string(), 0.1),
        ("c".to_string(), std::f64::consts::PI / 3.0),
    ];
    let n = 3;
    let write = |values: &[(String, f64)], tensor_2: Option<f64>| {
        let mut tensors = Vec::new();
        for i in 0..n {
            let mut v = values.to_vec();
            if let (2, Some(x)) = (i, tensor_2) {
                v[1].1 = x;
            }
            push_scalar_tensors(&spec, &v, i, &mut tensors);
        }
        let mut group = Map::new();
        insert_group_scalars(&spec, values, &mut group);
        let meta = HashMap::from([("group".to_string(), Value::Object(group).to_string())]);
        let mut bytes = Vec::new();
        write_safetensors(&mut bytes, &tensors, meta).unwrap();
        bytes
    };
    let read = |bytes: &[u8]| -> Result<Vec<(String, f64)>> {
        let st = SafeTensors::deserialize(bytes).unwrap();
        let (_, m) = SafeTensors::read_metadata(bytes).unwrap();
        let group = &m.metadata().as_ref().unwrap()["group"];
        let mut group: Map<String, Value> = serde_json::from_str(group).unwrap();
        let from_group = take_group_scalars(&spec, &mut group)?;
        assert!(group.is_empty(), "the group's scalars are taken out");
        read_scalar_state(&spec, &from_group, &st, n)
    };
    let bytes = write(&values, None);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("state.1.a").unwrap().dtype(), Dtype::F32);
    assert_eq!(st.tensor("state.1.b").unwrap().dtype(), Dtype::F64);
    assert!(st.tensor("state.1.c").is_err());
    let back = read(&bytes).unwrap();
    let bits = |v: &[(String, f64)]| -> Vec<(String, u64)> {
        v.iter().map(|(n, x)| (n.clone(), x.to_bits())).collect()
    };
    assert_eq!(bits(&back), bits(&values));
    match read(&write(&values, Some(0.2))) {
        Err(Error::Checkpoint(m)) => assert!(m.contains("another tensor's b"), "{m}"),
        other => panic!("{other:?}"),
    }
}
