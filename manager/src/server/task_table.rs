//! The manager's tasks in memory: each task once, sorted by ID, with an index by the
//! node it is placed on. A reconcile pass takes the whole table by move
//! ([`TaskTable::take`]) and gives it back changed ([`TaskTable::replace`]) or, when its
//! write failed, as it was ([`TaskTable::put_back`]): a pass moves the tasks, it never
//! copies the ones it does not change (100,000 tasks are ~140 MB), and the index follows
//! only the tasks that changed node.
//!
//! Not here: what a pass decides ([`shoal_core::pass`]), or the store.

use std::collections::HashMap;

use shoal_proto::{NodeId, Task, TaskId};

/// Every task the manager holds. Lookups by ID are a binary search.
#[derive(Debug, Default)]
pub(super) struct TaskTable {
    /// Sorted by ID, each ID once.
    all: Vec<Task>,
    /// The IDs of `all` by the node they are placed on, so that a session's start reads
    /// its board's tasks without a walk over the whole fleet's (5,000 boards reconnecting
    /// would each walk 100,000 tasks under the services lock).
    on_node: HashMap<NodeId, Vec<TaskId>>,
}

impl TaskTable {
    /// A table of `tasks` (in any order; a later duplicate of an ID is dropped).
    pub(super) fn new(tasks: impl IntoIterator<Item = Task>) -> Self {
        let mut all: Vec<Task> = tasks.into_iter().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.dedup_by(|later, first| later.id == first.id);
        let mut on_node: HashMap<NodeId, Vec<TaskId>> = HashMap::new();
        for t in &all {
            if let Some(node) = &t.node_id {
                on_node.entry(node.clone()).or_default().push(t.id.clone());
            }
        }
        Self { all, on_node }
    }

    /// The task with this ID.
    pub(super) fn get(&self, id: &TaskId) -> Option<&Task> {
        self.all.binary_search_by(|t| t.id.cmp(id)).ok().map(|i| &self.all[i])
    }

    /// Every task, by ID, as one slice: what the core's functions take, without a copy.
    pub(super) fn all(&self) -> &[Task] {
        &self.all
    }

    /// Every task, by ID.
    pub(super) fn values(&self) -> std::slice::Iter<'_, Task> {
        self.all.iter()
    }

    /// The tasks placed on `node`, in no particular order.
    pub(super) fn on<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.on_node.get(node).into_iter().flatten().filter_map(|id| self.get(id))
    }

    /// Every task, moved out for a pass; the table is empty until [`Self::replace`] or
    /// [`Self::put_back`] (the caller holds the services lock throughout).
    pub(super) fn take(&mut self) -> Vec<Task> {
        std::mem::take(&mut self.all)
    }

    /// The tasks [`Self::take`] took, back as they were (a pass's
    /// [`shoal_core::pass::Outcome::undo`]): the index is still true for them.
    pub(super) fn put_back(&mut self, tasks: Vec<Task>) {
        debug_assert!(tasks.is_sorted_by(|a, b| a.id < b.id));
        self.all = tasks;
    }

    /// The tasks after a pass (sorted by ID), with the tasks whose node it changed, each
    /// with its node before and after ([`shoal_core::pass::Outcome::moves`]).
    pub(super) fn replace(&mut self, tasks: Vec<Task>, moves: Vec<(TaskId, Option<NodeId>, Option<NodeId>)>) {
        debug_assert!(tasks.is_sorted_by(|a, b| a.id < b.id));
        self.all = tasks;
        for (id, was, now) in moves {
            if let Some(was) = was {
                if let Some(ids) = self.on_node.get_mut(&was) {
                    ids.retain(|x| *x != id);
                    if ids.is_empty() {
                        self.on_node.remove(&was);
                    }
                }
            }
            if let Some(now) = now {
                self.on_node.entry(now).or_default().push(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index rebuilt from scratch, for comparison.
    fn index(table: &TaskTable) -> HashMap<NodeId, Vec<TaskId>> {
        let mut out = TaskTable::new(table.all.iter().cloned()).on_node;
        out.values_mut().for_each(|ids| ids.sort());
        out
    }

    fn sorted(mut m: HashMap<NodeId, Vec<TaskId>>) -> HashMap<NodeId, Vec<TaskId>> {
        m.values_mut().for_each(|ids| ids.sort());
        m
    }

    #[test]
    fn the_index_follows_the_moves_a_pass_names() {
        let node = |n: u8| NodeId::from_random([n; 16]);
        let task = |n: u8, on: Option<u8>| {
            let mut t = super::super::tests::task(n, 1, on);
            t.node_id = on.map(node);
            t
        };
        let mut table = TaskTable::new([task(3, Some(1)), task(1, Some(1)), task(2, None), task(1, Some(2))]);
        assert!(table.values().map(|t| &t.id).is_sorted() && table.values().len() == 3);
        assert_eq!(table.get(&TaskId::from_random([1; 16])).unwrap().node_id, Some(node(1)), "the first of an ID kept");
        assert_eq!(table.on(&node(1)).count(), 2);

        // Task 2 placed on node 2, task 3 removed, task 4 created on node 2.
        assert_eq!(table.take().len(), 3);
        assert!(table.values().next().is_none());
        let mut after = vec![task(1, Some(1)), task(2, Some(2)), task(4, Some(2))];
        after.sort_by(|a, b| a.id.cmp(&b.id));
        let moves = vec![
            (TaskId::from_random([2; 16]), None, Some(node(2))),
            (TaskId::from_random([3; 16]), Some(node(1)), None),
            (TaskId::from_random([4; 16]), None, Some(node(2))),
        ];
        table.replace(after, moves);
        assert_eq!(sorted(table.on_node.clone()), index(&table));
        assert_eq!(table.on(&node(2)).count(), 2);
        assert!(table.get(&TaskId::from_random([3; 16])).is_none());

        // Given back as taken: nothing moves.
        let taken = table.take();
        let before = taken.clone();
        table.put_back(taken);
        assert_eq!(table.values().cloned().collect::<Vec<_>>(), before);
        assert_eq!(sorted(table.on_node.clone()), index(&table));
    }
}
